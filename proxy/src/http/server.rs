//! The serve loop of one HTTP connection: hyper serves the client (HTTP/1.1 with keep-alive,
//! HTTP/2 when the client opens with the preface, upgrades), and each request becomes an
//! [`Exchange`] that goes on by the side that accepted the connection ([`Side`]).
//!
//! Outbound, every request is routed and runs its route's phases in Envoy's order
//! ([`super::filters`]), then is forwarded with retries and mirrors ([`super::forward`]).
//! Inbound, as Envoy's sidecar inbound listener: every request goes to the app at the
//! connection's original destination as it came (no routing, no retries; `x-forwarded-for`
//! untouched, `x-request-id` kept or generated), over the pod's `inbound|port||` cluster.
//!
//! Either way, one access log line and the `istio_request*` metrics (`reporter` per side) are
//! recorded when the response body ends, or when the client goes away first (flag DC)
//! ([`super::exchange`]). A request delivered straight to a pod this proxy serves
//! ([`crate::upstream::local`]) never reaches that pod's inbound listener, so its outbound
//! handler also records the line and metrics the inbound side would have
//! (`reporter="destination"`).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::{self, Exchange};
use super::headers;
use super::limits::{self, InFlight, Refusal};
use super::local_reply::{LocalReply, Reply, grpc_local_reply};
use crate::context::HttpLimits;
use crate::response_flag::{ResponseFlag, ResponseFlags};
use crate::upstream::Body;
use guard::Guarded;

mod guard;

pub use super::connection::{ConnectionMemo, GatewayRoute, HttpConnection, InboundApp, Side};

/// Serves HTTP on `io` until the client closes, a limit closes it, or the pod's drain
/// forces it closed.
pub async fn serve<IO>(connection: Arc<HttpConnection>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = connection.pod.drain.clone();
    let proxy = connection.proxy.clone();
    let limits = &proxy.http_limits;
    let watch = connection.memo.watch.clone();
    let connection_client = connection.client;
    let io = {
        let connection = connection.clone();
        Guarded::new(
            io,
            watch.clone(),
            proxy.metrics.clone(),
            limits,
            Box::new(move |refusal, started| refuse_head(&connection, refusal, started)),
        )
    };
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |request| {
            // Counted here, as hyper takes the request: the head scanner waits for it.
            let in_flight = watch.dispatch();
            let connection = connection.clone();
            async move {
                let watch = connection.memo.watch.clone();
                let connect = request.method() == Method::CONNECT;
                let response = handle(connection, request, in_flight).await;
                // The guard holds what follows a head that may upgrade until this says.
                let status = response.status();
                watch.answered(
                    status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()),
                );
                Ok::<_, Infallible>(response)
            }
        })
    };
    let builder = builder(limits);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let idle = async {
        match limits.idle_timeout {
            Some(timeout) => watch.idle(timeout).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        biased;
        () = drain.force_closed() => return,
        () = drain.accepting_stopped() => None,
        () = watch.tripped() => {
            tracing::info!(
                client = %connection_client,
                streams = watch.dispatched_count(),
                "HTTP/2 client reset too many streams early (rapid reset): GOAWAY"
            );
            proxy.metrics.limit_hit("premature_resets");
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(guard::CLOSE_GRACE, served.as_mut()).await;
            return;
        }
        () = idle => {
            proxy.metrics.limit_hit("idle_timeout");
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(guard::CLOSE_GRACE, served.as_mut()).await;
            return;
        }
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

/// hyper's server as the limits configure it.
fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // As for upstream connections (`upstream/pool.rs`): flat writes, `send(2)`.
        .writev(false)
        .timer(TokioTimer::new())
        // The head scanner ([`guard`]) times heads out, from their first byte as Envoy does;
        // hyper's own timeout would also close idle keep-alive connections.
        .header_read_timeout(None)
        // Backstops to the head scanner: hyper answers 431 too past these.
        .max_headers(limits.max_headers_count)
        .max_buf_size(limits.max_request_headers_bytes.max(MIN_BUF_SIZE) + MIN_BUF_SIZE);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // HPACK: the decoded header list, as the HTTP/1 head is bounded. h2's own bound is
        // a ceiling above the limit, which `check_request` enforces (431, counted, logged);
        // the dynamic table stays at h2's 4 KiB.
        .max_header_list_size(
            u32::try_from(
                limits
                    .max_request_headers_bytes
                    .saturating_mul(limits::H2_HEADER_LIST_CEILING),
            )
            .unwrap_or(u32::MAX),
        )
        // Bursts of resets are h2's to stop; paced ones are counted per connection
        // ([`StreamWatch::reset`]).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    builder
}

/// hyper's smallest HTTP/1 read buffer (`max_buf_size` panics below it).
const MIN_BUF_SIZE: usize = 8192;
/// h2's defaults, stated (CVE-2023-44487 and CVE-2024-27316's bounds).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// One request: its exchange, the listener's checks, its side's pipeline, a gRPC form for a
/// gRPC client's local reply, and the response body tracked so the exchange is recorded
/// when it ends.
async fn handle(
    connection: Arc<HttpConnection>,
    mut request: Request<Incoming>,
    in_flight: InFlight,
) -> Response<Body> {
    let upgrade = (headers::wants_upgrade(request.headers())
        || request.method() == Method::CONNECT)
        .then(|| hyper::upgrade::on(&mut request));
    let (mut parts, incoming) = request.into_parts();
    let request_id = headers::ensure_request_id(&mut parts.headers);
    // Before anything reads the headers on: the next hop gets this side's span as parent.
    let span = super::span::begin(&connection, &mut parts.headers);
    let (mut exchange, body) = Exchange::new(connection.clone(), &parts, request_id, incoming);
    exchange.span = span;
    exchange.hold_in_flight(in_flight);
    let limits = &connection.proxy.http_limits;
    if let Some(refusal) = limits::check_request(limits, &parts) {
        let reply = refuse(&connection, &mut exchange, refusal);
        return exchange::track(reply.0, reply.1, exchange);
    }
    // Before authorization and routing, on both sides, as Envoy's connection manager does:
    // the rules see the path the upstream will get.
    if let Some(reply) = normalize_path(&connection, &mut parts) {
        let reply = exchange.reply(reply);
        return exchange::track(reply.0, reply.1, exchange);
    }
    let request_body = exchange.request_body.clone();
    let pipeline = async {
        match &connection.side {
            Side::Outbound { routes, gateway } => {
                let routes = routes.routes();
                exchange.access_log = routes.mesh().access_log_on();
                connection
                    .outbound(
                        &*routes,
                        gateway.as_ref(),
                        parts,
                        body,
                        upgrade,
                        &mut exchange,
                    )
                    .await
            }
            Side::Inbound(app) => {
                exchange.access_log = connection.proxy.access_log_on();
                connection
                    .inbound(app, parts, body, upgrade, &mut exchange)
                    .await
            }
        }
    };
    let finished = match limits.stream_idle_timeout {
        Some(timeout) => until_idle(pipeline, &request_body, timeout).await,
        None => Some(pipeline.await),
    };
    let (response, grpc_status) = match finished {
        Some(reply) if request_body.failed() && blames_upstream(&exchange) => {
            // The client's body broke its framing (an invalid chunk): the upstream only saw
            // the request cut short. The client's fault, answered as such.
            drop(reply);
            exchange
                .flags
                .retain(|flag| !UPSTREAM_FAILURES.contains(&flag));
            refuse(&connection, &mut exchange, Refusal::InvalidBody)
        }
        Some(reply) => reply,
        None => {
            connection.proxy.metrics.limit_hit("stream_idle_timeout");
            exchange.response_code_details = Some("stream_idle_timeout".to_owned());
            exchange.reply(LocalReply::text(
                StatusCode::REQUEST_TIMEOUT,
                "stream timeout",
                ResponseFlag::StreamIdleTimeout,
            ))
        }
    };
    let (response, grpc_status) = if exchange.grpc {
        grpc_local_reply((response, grpc_status))
    } else {
        (response, grpc_status)
    };
    exchange::track(response, grpc_status, exchange)
}

/// The flags a failed forward sets that blame the upstream.
const UPSTREAM_FAILURES: [ResponseFlag; 3] = [
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::UpstreamConnectionFailure,
];

fn blames_upstream(exchange: &Exchange) -> bool {
    exchange
        .flags
        .iter()
        .any(|flag| UPSTREAM_FAILURES.contains(&flag))
}

/// The local reply for a request the listener's limits refuse, counted and flagged `DPE`
/// (or as its refusal says), closing an HTTP/1 connection.
fn refuse(connection: &HttpConnection, exchange: &mut Exchange, refusal: Refusal) -> Reply {
    tracing::debug!(limit = refusal.limit(), "refused a request");
    connection.proxy.metrics.limit_hit(refusal.limit());
    exchange.response_code_details = Some(refusal.details().to_owned());
    let reason = refusal.status().canonical_reason().unwrap_or("Bad Request");
    let mut reply = exchange.reply(LocalReply::text(
        refusal.status(),
        reason,
        ResponseFlag::DownstreamProtocolError,
    ));
    reply
        .0
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    reply
}

/// Counts and logs a head the guard refused (and answered) before hyper parsed it: the
/// same metric, flag and details as [`refuse`] gives a parsed request.
fn refuse_head(connection: &Arc<HttpConnection>, refusal: Refusal, started: tokio::time::Instant) {
    connection.proxy.metrics.limit_hit(refusal.limit());
    let mut exchange = Exchange::unparsed(connection.clone(), started.into_std());
    exchange.access_log = match &connection.side {
        Side::Outbound { routes, .. } => routes.routes().mesh().access_log_on(),
        Side::Inbound(_) => connection.proxy.access_log_on(),
    };
    exchange.flag(ResponseFlag::DownstreamProtocolError);
    exchange.response_code_details = Some(refusal.details().to_owned());
    exchange.record_answered(refusal.status().as_u16());
}

/// Runs `pipeline` until it answers, or until neither it nor the request body moved for
/// `timeout` (`None`: the stream idle timeout). Activity is the request body's bytes, looked
/// at each time the timer runs out, so an idle stream ends between one and two timeouts.
async fn until_idle<F: Future>(
    pipeline: F,
    request_body: &exchange::BodyState,
    timeout: Duration,
) -> Option<F::Output> {
    tokio::pin!(pipeline);
    let mut seen = request_body.bytes();
    loop {
        tokio::select! {
            biased;
            output = &mut pipeline => return Some(output),
            () = tokio::time::sleep(timeout) => {
                let now = request_body.bytes();
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// Rewrites the request's path as MeshConfig `pathNormalization` says (the query kept as
/// sent); the 400 for a path it refuses (an escaped NUL, a control character), as Envoy
/// answers.
fn normalize_path(
    connection: &HttpConnection,
    parts: &mut http::request::Parts,
) -> Option<LocalReply> {
    match normalized_uri(connection, parts) {
        Ok(Some(uri)) => {
            parts.uri = uri;
            None
        }
        Ok(None) => None,
        Err(()) => Some(LocalReply::text(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            ResponseFlags::NONE,
        )),
    }
}

/// The request's URI with its path normalized; `None` when it is unchanged.
fn normalized_uri(
    connection: &HttpConnection,
    parts: &http::request::Parts,
) -> Result<Option<http::Uri>, ()> {
    let mode = connection.proxy.routes.routes().mesh().path_normalization;
    let Some(target) = parts.uri.path_and_query().map(|p| p.as_str().to_owned()) else {
        return Ok(None);
    };
    let normalized = shunt_mesh::http_path::normalize(&target, mode).map_err(|error| {
        tracing::debug!(%error, path = %target, "refused a request path");
    })?;
    if normalized == target {
        return Ok(None);
    }
    let mut uri = parts.uri.clone().into_parts();
    uri.path_and_query = Some(normalized.parse().map_err(|_| ())?);
    http::Uri::from_parts(uri).map(Some).map_err(|_| ())
}

#[cfg(test)]
mod tests;
