//! Sending a request on, once the phases ([`super::filters`]) let it through: outbound, the
//! attempts against the route's cluster (retries with Envoy's back-off, per-try timeout,
//! all under the route timeout) and the mirrors (fire and forget, once the primary has its
//! answer); inbound, the one attempt to the app ([`HttpConnection::deliver`]). Also the
//! response as it goes back ([`HttpConnection::relay`]: hop-by-hop headers, upgrades
//! tunnelled) and, for a request that reached a pod this proxy serves, that pod's inbound
//! side ([`HttpConnection::destination_side`]) for the exchange to record as well.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use shunt_mesh::ids::EndpointAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::connection::{DestinationSide, HttpConnection, InboundApp, Side};
use super::exchange::{Counted, Exchange};
use super::headers;
use super::local_reply::{LocalReply, Reply, full};
use super::replay::Replay;
use super::route_policy::{self as policy, AttemptOutcome};
use crate::peer_security::Principal;
use crate::pod::Pod;
use crate::response_flag::ResponseFlag;
use crate::telemetry::security::PeerSecurity;
use crate::upstream::{
    self, Body, ClusterState, Delivery, HttpVersion, Picked, UpstreamBody, UpstreamError,
};
use shunt_mesh::index::MeshIndex;
use shunt_mesh::model::Workload;
use shunt_mesh::routing::{Cluster, Destination, HttpRoute, LoadBalancer, PortProtocol, Routes};

/// Request bodies up to this size are kept as they stream by when a retry or a mirror may
/// resend them; beyond it, a body is neither retried nor mirrored.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// Envoy's default base interval between retries (doubling, with jitter, capped at 10×).
const RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// Envoy appends this to the authority of mirrored requests.
const SHADOW_SUFFIX: &str = "-shadow";

/// An outbound request ready for its cluster: its head as the upstream sees it (after the
/// header-edit phase), its body and the client's side of an upgrade.
pub(super) struct Outgoing {
    pub(super) parts: http::request::Parts,
    pub(super) body: Counted,
    /// The client's side of an upgrade (WebSocket, CONNECT), when it asked for one.
    pub(super) upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// `:authority` / `Host` for the upstream (after an authority rewrite).
    pub(super) authority: Option<String>,
    /// The client's IP, for consistent hashing on the source IP.
    pub(super) client_ip: Option<Ipv4Addr>,
    /// The pod at the original destination, for a passthrough's labels.
    pub(super) destination_workload: Option<Arc<Workload>>,
}

/// What forwarding came back with.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once straight into the response"
)]
pub(super) enum Forwarded {
    /// The upstream's response, hop-by-hop headers removed, and the `Set-Cookie` of a
    /// consistent-hash cookie the upstream must not see issued twice.
    Upstream {
        head: http::response::Parts,
        body: UpstreamBody,
        grpc_status: Option<u32>,
        set_cookie: Option<HeaderValue>,
    },
    /// A local reply (no endpoint, failures, timeouts), its flags already on the exchange.
    Local(Reply),
}

impl HttpConnection {
    /// Sends the outbound request to `cluster`, with `route`'s retries, timeout and mirrors.
    pub(super) async fn forward(
        &self,
        routes: &dyn Routes,
        route: &HttpRoute,
        cluster: &Arc<Cluster>,
        outgoing: Outgoing,
        exchange: &mut Exchange,
    ) -> Forwarded {
        let Outgoing {
            parts,
            body,
            upgrade,
            authority,
            client_ip,
            destination_workload,
        } = outgoing;
        let state = self.upstreams.cluster(cluster);
        let upgrading = upgrade.is_some();
        let version = upstream_version(upgrading, cluster.protocol, parts.version);
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
            authority,
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
            destination_workload,
            connection: self,
        };
        let outcome = match route.timeout {
            Some(timeout) => tokio::time::timeout(timeout, attempts.run(exchange))
                .await
                .unwrap_or_else(|_| Err(Box::new(exchange.reply(LocalReply::upstream_timeout())))),
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
            Err(reply) => return Forwarded::Local(*reply),
        };
        if let Some(tunnel) = response.body().tunnel() {
            exchange.security = PeerSecurity::MutualTls {
                source: self.proxy.metrics.peers.identity(self.source.as_ref()),
                destination: Some(Principal::new(tunnel.peer_identity.clone())),
            };
        }
        exchange.delivered = response
            .body()
            .delivered()
            .and_then(Delivery::pod)
            .zip(exchange.upstream.as_ref())
            .map(|(pod, picked)| self.destination_side(pod, picked.addr.into()));
        let (head, body, grpc_status) = self.relay(response, upgrade, &template.parts.method);
        Forwarded::Upstream {
            head,
            body,
            grpc_status,
            set_cookie,
        }
    }

    /// Hands an inbound request to the app as Envoy's inbound listener does: one attempt, no
    /// timeout, headers as received but for hop-by-hop ones; `x-forwarded-for` is left alone
    /// (Istio's inbound does not use the remote address, so the client's own proxy's entry is
    /// the only one) and `x-forwarded-proto` set only when absent.
    pub(super) async fn deliver(
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
        let picked = state.passthrough(self.orig_dst.into(), app.workload.clone());
        exchange.upstream = Some(picked.clone());
        let sent_at = Instant::now();
        let request = template.build(body.map_err(Into::into).boxed());
        let response = match state.send(&picked, request, version).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "inbound request to the app failed");
                return exchange.reply(LocalReply::upstream_failure(&error));
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
        mut response: Response<UpstreamBody>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        method: &Method,
    ) -> (http::response::Parts, UpstreamBody, Option<u32>) {
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

    /// A request about to be delivered to a pod served here skips that pod's inbound
    /// listener: its `authz` phase runs here, as that side ([`HttpConnection::destination_side`]).
    /// The 403 when its policies deny the request, recorded on both sides.
    fn authorize_delivery(
        &self,
        picked: &Picked,
        request: &http::request::Parts,
        exchange: &mut Exchange,
    ) -> Option<Reply> {
        let index = self.proxy.state.load();
        let pod = self
            .proxy
            .local_pods
            .target(&self.pod.uid, &index, picked.addr.socket_addr())?;
        drop(index);
        let side = self.destination_side(pod, picked.addr.into());
        let Side::Inbound(app) = &side.side else {
            return None;
        };
        // A pod with CUSTOM policies is never delivered to from here (`LocalPods::target`):
        // its checks need its own inbound pass.
        let decision = super::security::authorize(
            &side,
            app,
            request,
            None,
            shunt_mesh::security::authz::RemoteIp::Peer,
            exchange,
        )?;
        if decision.allowed {
            return None;
        }
        exchange.response_code_details = decision.response_code_details();
        exchange.delivered = Some(side.clone());
        Some(exchange.reply(LocalReply::access_denied()))
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
        let workload = index.workload_by_uid(pod.uid.as_str()).cloned();
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
            || pod.uid.to_string(),
            |w| format!("{}/{}", w.namespace, w.name),
        );
        let mut app = InboundApp::new(workload, service, addr.port(), declared);
        // Both pods are served here: each one's identity is known from its netns.
        app.security = self
            .proxy
            .metrics
            .peers
            .same_node(self.source.as_ref(), app.workload.as_ref());
        Arc::new(Self {
            proxy: self.proxy.clone(),
            side: Side::Inbound(app),
            pod,
            // A delivered request's destination side only reports: it dials nothing.
            upstreams: self.upstreams.clone(),
            pod_name,
            // As the TCP delivery does (`conn/l4.rs`): the app's own address, so both
            // access log lines of a request name the same client.
            client: self.client,
            orig_dst: addr,
            source: self.source.clone(),
            memo: super::connection::ConnectionMemo::default(),
        })
    }
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
    /// The connection the request came on, for a same-node delivery's destination side.
    connection: &'a HttpConnection,
}

impl Attempts<'_> {
    /// Tries until a response is final or the retries run out. `Err` is a local reply whose
    /// flags are on the exchange already.
    async fn run(self, exchange: &mut Exchange) -> Result<Response<UpstreamBody>, Box<Reply>> {
        let retries = &self.route.retries;
        let mut tried: Vec<EndpointAddr> = Vec::new();
        let mut retried = 0u32;
        // Held until the request is over: `maxRetries` bounds concurrent retries.
        let mut retry_permits: Vec<upstream::RetryPermit> = Vec::new();
        if self.passthrough.is_none()
            && let Err(error) = self.state.resolve().await
        {
            tracing::debug!(%error, "no endpoint: the cluster's DNS names do not resolve");
            return Err(Box::new(
                exchange.reply(LocalReply::no_healthy_upstream(&error)),
            ));
        }
        loop {
            let picked = match self.pick(&tried) {
                Ok(picked) => picked,
                Err(error) => {
                    return Err(Box::new(
                        exchange.reply(LocalReply::no_healthy_upstream(&error)),
                    ));
                }
            };
            if let Some(reply) =
                self.connection
                    .authorize_delivery(&picked, &self.template.parts, exchange)
            {
                return Err(Box::new(reply));
            }
            let Some(body) = self.body_for_attempt() else {
                // A streamed body was already sent once; nothing more can be tried.
                return Err(Box::new(exchange.reply(LocalReply::retry_limit_exceeded())));
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
                return result.map_err(|error| Box::new(exchange.reply(failure(error))));
            }
            let can_resend = matches!(self.body, Resend::Replay(replay) if replay.can_replay());
            let permit = (retried < retries.attempts && can_resend)
                .then(|| self.state.try_retry())
                .flatten();
            let Some(permit) = permit else {
                if retries.attempts > 0 {
                    exchange.flag(ResponseFlag::UpstreamRetryLimitExceeded);
                }
                return result.map_err(|error| Box::new(exchange.reply(failure(error))));
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

    fn pick(&self, tried: &[EndpointAddr]) -> Result<Picked, UpstreamError> {
        if let Some(addr) = self.passthrough {
            return Ok(self
                .state
                .passthrough(addr.into(), self.destination_workload.clone()));
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
}

/// The local reply for a failed final attempt (`None`: the per-try timeout).
fn failure(error: Option<UpstreamError>) -> LocalReply {
    match error {
        None => LocalReply::upstream_timeout(),
        Some(error) => {
            tracing::debug!(%error, "upstream request failed");
            LocalReply::upstream_failure(&error)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_authorities_keep_the_port() {
        for (authority, shadow) in [("web.shop:80", "web.shop-shadow:80"), ("web", "web-shadow")] {
            assert_eq!(shadow_authority(authority), shadow);
        }
    }

    #[test]
    fn retry_back_off_stays_under_its_doubling_ceiling() {
        for (retry, ceiling_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (9, 250)] {
            for _ in 0..50 {
                assert!(
                    backoff(retry) <= Duration::from_millis(ceiling_ms),
                    "retry {retry}"
                );
            }
        }
    }

    #[test]
    fn upgrades_go_over_http1_and_h2_clusters_or_clients_over_h2() {
        let cases = [
            (
                true,
                PortProtocol::Http2,
                Version::HTTP_2,
                HttpVersion::Http1,
            ),
            (
                false,
                PortProtocol::Http2,
                Version::HTTP_11,
                HttpVersion::Http2,
            ),
            (
                false,
                PortProtocol::Http,
                Version::HTTP_2,
                HttpVersion::Http2,
            ),
            (
                false,
                PortProtocol::Http,
                Version::HTTP_11,
                HttpVersion::Http1,
            ),
        ];
        for (upgrading, cluster, downstream, expected) in cases {
            assert_eq!(
                upstream_version(upgrading, cluster, downstream),
                expected,
                "{upgrading} {cluster:?} {downstream:?}"
            );
        }
    }
}
