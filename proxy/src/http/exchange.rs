//! One request's facts ([`Exchange`]), its `istio_request*` labels and its access log line,
//! recorded once when the response body ends, or when the client goes away first (flag
//! `DC`).
//!
//! The body wrappers live here because they feed the exchange: [`Counted`] counts the
//! request body's bytes as they stream upstream, [`Tracked`] carries the exchange with the
//! response body and records it when that body ends or is dropped ([`track`]). A request
//! delivered straight to a pod this proxy serves also records the line and metrics its
//! inbound listener would have (`reporter="destination"`), through the destination side
//! [`super::forward`] sets in [`Exchange::delivered`].
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::connection::{HttpConnection, SeriesKey, Side};
use super::limits::InFlight;
use super::local_reply::{LocalReply, Reply};
use super::route_policy as policy;
use super::span::{self, SpanStart};
use crate::response_flag::{ResponseFlag, ResponseFlags};
use crate::telemetry::access_log::{Direction, HttpEntry};
use crate::telemetry::metrics::{DestinationService, HttpLabels, RequestSample, UNKNOWN};
use crate::telemetry::peer::{Peer, PeerLabels};
use crate::telemetry::security::{PeerSecurity, SecurityPolicy, principal_label};
use crate::telemetry::trace::{RequestFacts, SpanKind, SpanWorkload};
use crate::upstream::{self, Body, BoxError, Picked};
use shunt_mesh::model::{Service, Workload};
use shunt_mesh::routing::Cluster;

/// What the access log says of a fact a request refused before parsing never had.
const UNPARSED: &str = "-";

/// Label sets a connection keeps metric handles for: a few response codes and flags.
const CACHED_SERIES: usize = 4;

/// Everything known about one request by the time it is logged. Dropped unrecorded (the
/// client went away before the response started), it records itself with flag DC.
pub(super) struct Exchange {
    /// Where to record it; taken when recorded.
    recorder: Option<Arc<HttpConnection>>,
    /// The destination pod's inbound side, when the response came straight from a pod served
    /// here: recorded there too, after the source side.
    pub(super) delivered: Option<Arc<HttpConnection>>,
    started: Instant,
    start_time: SystemTime,
    /// `None` (logged `-`) when the head was refused before it was parsed.
    method: Option<Method>,
    path: String,
    protocol: &'static str,
    pub(super) grpc: bool,
    pub(super) authority: Option<String>,
    user_agent: Option<String>,
    request_id: String,
    pub(super) x_forwarded_for: Option<String>,
    request_header_bytes: u64,
    pub(super) request_body: Arc<BodyState>,
    /// Holds the request as in flight on its connection until the exchange is over.
    in_flight: Option<InFlight>,
    pub(super) flags: ResponseFlags,
    pub(super) route_name: Option<String>,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`, when a phase set one (authn, authz).
    pub(super) response_code_details: Option<String>,
    /// The registry host the request was for, when known before a cluster was chosen.
    pub(super) target_service: Option<Arc<Service>>,
    pub(super) cluster: Option<Arc<Cluster>>,
    pub(super) upstream: Option<Picked>,
    pub(super) upstream_service_time: Option<Duration>,
    /// How the upstream connection that carried the request authenticated its peers
    /// (plaintext unless set; an HBONE connection's mTLS). A same-node delivery's comes from
    /// its destination side instead ([`HttpConnection::security`]).
    pub(super) security: PeerSecurity,
    /// Whether the mesh config has the access log on (`accessLogFile`), as of the request.
    pub(super) access_log: bool,
    /// The request's tracing span, when tracing is on ([`span::begin`]).
    pub(super) span: Option<SpanStart>,
}

impl Exchange {
    /// The exchange of the request with head `parts` (its `x-request-id` already ensured),
    /// recorded by `connection`, and its body, counted into it.
    pub(super) fn new(
        connection: Arc<HttpConnection>,
        parts: &http::request::Parts,
        request_id: String,
        body: Incoming,
    ) -> (Self, Counted) {
        let mut exchange = Self::unparsed(connection, Instant::now());
        exchange
            .request_body
            .ended
            .store(body.is_end_stream(), Ordering::Relaxed);
        exchange.method = Some(parts.method.clone());
        exchange.path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |path| path.as_str().to_owned());
        exchange.protocol = protocol_name(parts.version);
        exchange.grpc = policy::is_grpc(&parts.headers);
        exchange.authority = authority(parts).map(str::to_owned);
        exchange.user_agent = header_text(&parts.headers, &header::USER_AGENT);
        exchange.request_id = request_id;
        exchange.request_header_bytes = header_bytes(&parts.headers);
        let request_body = exchange.request_body.clone();
        (exchange, Counted::new(body, request_body))
    }

    /// The exchange of a request whose head the listener refused before it was parsed (the
    /// head scanner's refusals): only when it began and how it ends are known, so its method,
    /// path and id are logged `-`, as Envoy logs a codec error's. ([`Self::new`] starts
    /// from it.)
    pub(super) fn unparsed(connection: Arc<HttpConnection>, started: Instant) -> Self {
        let request_body = Arc::new(BodyState {
            bytes: AtomicU64::new(0),
            ended: AtomicBool::new(true),
            failed: AtomicBool::new(false),
        });
        Self {
            recorder: Some(connection),
            delivered: None,
            started,
            start_time: SystemTime::now()
                .checked_sub(started.elapsed())
                .unwrap_or_else(SystemTime::now),
            method: None,
            path: UNPARSED.to_owned(),
            protocol: protocol_name(Version::HTTP_11),
            grpc: false,
            authority: None,
            user_agent: None,
            request_id: UNPARSED.to_owned(),
            x_forwarded_for: None,
            request_header_bytes: 0,
            request_body,
            in_flight: None,
            flags: ResponseFlags::NONE,
            route_name: None,
            response_code_details: None,
            target_service: None,
            cluster: None,
            upstream: None,
            upstream_service_time: None,
            security: PeerSecurity::None,
            access_log: true,
            span: None,
        }
    }

    /// Records a local answer with no body (a refused head's, written by the listener).
    pub(super) fn record_answered(mut self, status: u16) {
        self.record(status, None, 0, 0);
    }

    /// Keeps the request in flight on its connection until the exchange is over.
    pub(super) fn hold_in_flight(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    pub(super) fn flag(&mut self, flag: ResponseFlag) {
        self.flags.insert(flag);
    }

    /// Sets the local reply's flags and hands the reply on.
    pub(super) fn reply(&mut self, reply: LocalReply) -> Reply {
        self.flags.extend(&reply.flags);
        reply.into_reply()
    }

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
        let sample = RequestSample {
            duration_ms,
            request_bytes: self.request_header_bytes
                + self.request_body.bytes.load(Ordering::Relaxed),
            response_bytes: response_header_bytes + response_body_bytes,
        };
        connection.record_request(self, status, grpc_status, &sample);
        // Only the connection that served the request holds it in flight (not a same-node
        // delivery's destination side, recorded below); released once both are recorded.
        let in_flight = self.in_flight.take();
        if let Some(in_flight) = &in_flight {
            let watch = in_flight.watch();
            if self
                .flags
                .contains(ResponseFlag::DownstreamConnectionTermination)
            {
                // The client reset the stream (or left) before its response was over.
                watch.reset(
                    self.started.elapsed(),
                    connection
                        .proxy
                        .http_limits
                        .premature_reset_total_stream_count,
                );
            }
            if watch.is_tripped() {
                // A reset flood: its streams past the budget are counted, not each logged.
                self.access_log = false;
            }
        }
        connection.log_request(self, status, response_body_bytes);
        connection.report_span(self, status, grpc_status, &sample);
        if let Some(delivered) = self.delivered.take()
            && let Side::Inbound(app) = &delivered.side
        {
            // The destination side's own span, the child of this one.
            self.span = self.span.as_ref().map(SpanStart::delivered);
            // As the inbound listener would have seen it: its own cluster, no route, and only
            // the flags of its own leg.
            self.cluster = Some(app.cluster.clone());
            self.target_service.clone_from(&app.cluster.service);
            self.route_name = None;
            self.flags.retain(|flag| {
                matches!(
                    flag,
                    ResponseFlag::DownstreamConnectionTermination
                        | ResponseFlag::UpstreamConnectionTermination
                )
            });
            self.recorder = Some(delivered);
            self.record(
                status,
                grpc_status,
                response_header_bytes,
                response_body_bytes,
            );
        }
        drop(in_flight);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.recorder.is_some() {
            // The request's future was dropped: the client closed before any response.
            self.flag(ResponseFlag::DownstreamConnectionTermination);
            self.record(0, None, 0, 0);
        }
    }
}

impl HttpConnection {
    /// The pod that served the request: inbound, this one; outbound, the endpoint picked.
    fn destination_workload(&self, exchange: &Exchange) -> Option<Arc<Workload>> {
        match &self.side {
            Side::Inbound(app) => app.workload.clone(),
            Side::Outbound { .. } => exchange.upstream.as_ref().and_then(|p| p.workload.clone()),
        }
    }

    /// How the request's peers were authenticated: inbound, as the connection was accepted
    /// (a same-node delivery's destination side: both pods'); outbound, the destination side
    /// it was delivered to, else the upstream connection it took.
    fn security<'a>(&'a self, exchange: &'a Exchange) -> &'a PeerSecurity {
        match &self.side {
            Side::Inbound(app) => &app.security,
            Side::Outbound { .. } => match exchange.delivered.as_deref().map(|d| &d.side) {
                Some(Side::Inbound(app)) => &app.security,
                _ => &exchange.security,
            },
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
            flags: exchange.flags,
            security: self.security(exchange).clone(),
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
        let peers = &self.proxy.metrics.peers;
        let service = exchange
            .cluster
            .as_ref()
            .and_then(|c| c.service.clone())
            .or_else(|| exchange.target_service.clone());
        let service = match (service, &exchange.cluster) {
            (Some(s), _) => DestinationService::Service(s),
            // A ServiceEntry host: Istio names it in all three... but the namespace.
            (None, Some(c)) if !c.key.host.0.is_empty() => {
                DestinationService::Host(c.key.host.0.clone())
            }
            (None, _) => DestinationService::Unknown,
        };
        let cluster = exchange.cluster.as_deref();
        HttpLabels {
            reporter: self.reporter(),
            source: peers.get(self.source.as_ref()),
            destination: peers.get(self.destination_workload(exchange).as_ref()),
            service,
            destination_version: cluster.and_then(|c| c.version.clone()),
            destination_subset: cluster.and_then(|c| c.key.subset.clone()),
            security: self.security(exchange).clone(),
            request_protocol: if exchange.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: grpc_status,
            response_flags: exchange.flags,
        }
    }

    /// Writes the request's access log line and its flow event.
    fn log_request(&self, exchange: &Exchange, status: u16, response_body_bytes: u64) {
        let flows = &self.proxy.metrics.flows;
        if !exchange.access_log && !flows.is_on() {
            return;
        }
        let destination = self.destination_workload(exchange);
        let (source, destination_peer) = (
            Peer::new(self.source.as_deref()),
            Peer::new(destination.as_deref()),
        );
        let (src_workload, src_namespace) = (source.workload(), source.namespace());
        let (dst_workload, dst_namespace) =
            (destination_peer.workload(), destination_peer.namespace());
        let security = self.security(exchange);
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
            method: exchange.method.as_ref().map_or(UNPARSED, Method::as_str),
            path: &exchange.path,
            protocol: exchange.protocol,
            response_code: status,
            response_flags: exchange.flags,
            bytes_sent: response_body_bytes,
            bytes_received: exchange.request_body.bytes.load(Ordering::Relaxed),
            duration: millis(exchange.started.elapsed()),
            upstream_service_time: exchange.upstream_service_time.map(millis),
            upstream_host: exchange.upstream.as_ref().map(|p| p.addr),
            upstream_cluster: cluster.map(|c| upstream::ClusterName(&c.key)),
            x_forwarded_for: exchange.x_forwarded_for.as_deref(),
            user_agent: exchange.user_agent.as_deref(),
            request_id: &exchange.request_id,
            authority: exchange.authority.as_deref(),
            route_name: exchange.route_name.as_deref(),
            response_code_details: exchange.response_code_details.as_deref(),
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
            src_principal: principal_label(security.source_principal()),
            dst_workload,
            dst_namespace,
            dst_principal: principal_label(security.destination_principal()),
            dst_service,
            connection_security_policy: SecurityPolicy::of(security, self.reporter()).as_str(),
            peer_security: security.kind(),
        };
        if flows.is_on() {
            flows.push(crate::telemetry::flows::http(
                &entry,
                exchange.grpc,
                self.source.as_deref(),
                destination.as_deref(),
            ));
        }
        if exchange.access_log
            && let Err(error) = self.proxy.access_log.record(&entry)
        {
            tracing::warn!(%error, "access log entry lost");
        }
    }
}

impl HttpConnection {
    /// Reports the request's span, when it has one: this side's workload, the request's
    /// facts as Istio tags them.
    fn report_span(
        &self,
        exchange: &Exchange,
        status: u16,
        grpc_status: Option<u32>,
        sample: &RequestSample,
    ) {
        let Some(start) = &exchange.span else {
            return;
        };
        if !start.context.sampled {
            return;
        }
        let destination = self.destination_workload(exchange);
        let workload = match start.kind {
            SpanKind::Client => self.source.as_ref(),
            SpanKind::Server => destination.as_ref(),
        };
        let peers = &self.proxy.metrics.peers;
        let labels = peers.get(workload);
        let known = PeerLabels::or_unknown(labels.as_deref());
        let span_workload = SpanWorkload {
            app: Some(known.app()).filter(|app| *app != UNKNOWN),
            workload_name: known.workload(),
            namespace: known.namespace(),
            canonical_service: known.canonical_service(),
            canonical_revision: known.canonical_revision(),
        };
        let node_id = workload.map_or_else(
            || UNKNOWN.to_owned(),
            |w| {
                let ip = w.ip.map_or_else(|| UNKNOWN.to_owned(), |ip| ip.to_string());
                format!(
                    "sidecar~{ip}~{}.{}~{}.svc.cluster.local",
                    w.name, w.namespace, w.namespace
                )
            },
        );
        let cluster = exchange.cluster.as_deref();
        let authority = exchange
            .authority
            .clone()
            .unwrap_or_else(|| self.orig_dst.to_string());
        // The route's host: the Service (or ServiceEntry host), else what the client asked.
        let host = cluster
            .and_then(|c| c.service.as_ref().map(|s| s.hostname()))
            .or_else(|| {
                cluster
                    .map(|c| c.key.host.0.to_string())
                    .filter(|host| !host.is_empty())
            })
            .or_else(|| exchange.target_service.as_ref().map(|s| s.hostname()))
            .unwrap_or_else(|| {
                authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(host, _)| host)
                    .to_owned()
            });
        let upstream_cluster = cluster.map_or_else(
            || UNKNOWN.to_owned(),
            |c| upstream::ClusterName(&c.key).to_string(),
        );
        let flags = exchange.flags.to_string();
        let url = format!("http://{authority}{}", exchange.path);
        let routes = self.proxy.routes.routes();
        let facts = RequestFacts {
            host: &host,
            port: self.orig_dst.port(),
            url: &url,
            method: exchange.method.as_ref().map_or(UNPARSED, Method::as_str),
            protocol: exchange.protocol,
            status,
            grpc_status,
            upstream_cluster: &upstream_cluster,
            upstream_address: exchange.upstream.as_ref().map(|p| p.addr.socket_addr()),
            response_flags: &flags,
            request_size: sample.request_bytes,
            response_size: sample.response_bytes,
            peer_address: Some(self.client.0),
            request_id: &exchange.request_id,
            node_id: &node_id,
            mesh_id: &routes.mesh().trust_domain,
            cluster_id: peers.cluster_id(),
        };
        span::report(
            self,
            start,
            &span_workload,
            &facts,
            (exchange.start_time, exchange.started.elapsed()),
        );
    }
}

/// Wraps `response` so `exchange` is logged and measured when its body ends.
pub(super) fn track(
    response: Response<Body>,
    grpc_status: Option<u32>,
    exchange: Exchange,
) -> Response<Body> {
    let (head, body) = response.into_parts();
    let status = head.status.as_u16();
    let response_header_bytes = header_bytes(&head.headers);
    let idle_timeout = exchange
        .recorder
        .as_ref()
        .and_then(|connection| connection.proxy.http_limits.stream_idle_timeout);
    let tracked = Tracked {
        inner: body,
        bytes: 0,
        idle: idle_timeout.map(|timeout| StreamIdle {
            timeout,
            sleep: None,
            request_bytes: 0,
        }),
        finish: Some(Finish {
            exchange,
            status,
            grpc_status,
            response_header_bytes,
        }),
    };
    Response::from_parts(head, tracked.boxed())
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

/// What the downstream request body did, as its [`Counted`] wrapper saw it.
#[derive(Debug)]
pub(super) struct BodyState {
    bytes: AtomicU64,
    /// It was read to its end (or had none).
    ended: AtomicBool,
    /// Reading it failed: the client broke its framing (an invalid chunk) or went away.
    failed: AtomicBool,
}

impl BodyState {
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The downstream request body, counting the bytes it yields.
pub(super) struct Counted {
    inner: Incoming,
    state: Arc<BodyState>,
}

impl Counted {
    fn new(inner: Incoming, state: Arc<BodyState>) -> Self {
        Self { inner, state }
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
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.state
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.state.ended.store(true, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.state.ended.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(_))) => self.state.failed.store(true, Ordering::Relaxed),
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
    /// The stream idle timeout while the body streams.
    idle: Option<StreamIdle>,
    finish: Option<Finish>,
}

/// A response body's stream idle timer, armed the first time it waits.
struct StreamIdle {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The request body's bytes when the timer was last armed (a client streaming its
    /// request keeps the stream alive too).
    request_bytes: u64,
}

impl StreamIdle {
    /// Something moved: the timer starts over.
    fn active(&mut self) {
        if let Some(sleep) = &mut self.sleep {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }

    /// Whether the body has now waited the whole timeout with neither side moving a byte.
    fn expired(&mut self, cx: &mut Context<'_>, request_bytes: u64) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if request_bytes != self.request_bytes {
            self.request_bytes = request_bytes;
            sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
            return sleep.as_mut().poll(cx).is_ready();
        }
        true
    }
}

impl Tracked {
    fn finish(&mut self, complete: bool) {
        let Some(mut finish) = self.finish.take() else {
            return;
        };
        if !complete {
            finish
                .exchange
                .flag(ResponseFlag::DownstreamConnectionTermination);
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
                if let Some(idle) = &mut self.idle {
                    idle.active();
                }
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
                    finish
                        .exchange
                        .flag(ResponseFlag::UpstreamConnectionTermination);
                }
                self.finish(true);
            }
            Poll::Pending => {
                let request_bytes = self
                    .finish
                    .as_ref()
                    .map_or(0, |finish| finish.exchange.request_body.bytes());
                let this = &mut *self;
                if let Some(idle) = &mut this.idle
                    && idle.expired(cx, request_bytes)
                {
                    if let Some(finish) = &mut this.finish {
                        finish.exchange.flag(ResponseFlag::StreamIdleTimeout);
                        finish.exchange.response_code_details = Some("stream_idle_timeout".into());
                    }
                    this.idle = None;
                    if let Some(connection) = this
                        .finish
                        .as_ref()
                        .and_then(|finish| finish.exchange.recorder.as_ref())
                    {
                        connection.proxy.metrics.limit_hit("stream_idle_timeout");
                    }
                    this.finish(true);
                    // hyper resets the stream (HTTP/2) or closes the connection (HTTP/1).
                    return Poll::Ready(Some(Err("stream idle timeout".into())));
                }
            }
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
