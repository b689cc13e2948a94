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
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::exchange::{self, Exchange};
use super::headers;
use super::local_reply::{LocalReply, grpc_local_reply};
use crate::response_flag::ResponseFlags;
use crate::upstream::Body;

pub use super::connection::{ConnectionMemo, GatewayRoute, HttpConnection, InboundApp, Side};

/// Serves HTTP on `io` until the client closes or the pod's drain forces it closed.
pub async fn serve<IO>(connection: Arc<HttpConnection>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = connection.pod.drain.clone();
    let service = hyper::service::service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(handle(connection, request).await) }
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

/// One request: its exchange, its side's pipeline, a gRPC form for a gRPC client's local
/// reply, and the response body tracked so the exchange is recorded when it ends.
async fn handle(connection: Arc<HttpConnection>, mut request: Request<Incoming>) -> Response<Body> {
    let upgrade = (headers::wants_upgrade(request.headers())
        || request.method() == Method::CONNECT)
        .then(|| hyper::upgrade::on(&mut request));
    let (mut parts, incoming) = request.into_parts();
    let request_id = headers::ensure_request_id(&mut parts.headers);
    let (mut exchange, body) = Exchange::new(connection.clone(), &parts, request_id, incoming);
    // Before authorization and routing, on both sides, as Envoy's connection manager does:
    // the rules see the path the upstream will get.
    if let Some(reply) = normalize_path(&connection, &mut parts) {
        let reply = exchange.reply(reply);
        return exchange::track(reply.0, reply.1, exchange);
    }
    let (response, grpc_status) = match &connection.side {
        Side::Outbound { routes, gateway } => {
            let routes = routes.routes();
            exchange.access_log = routes.mesh().access_log_on();
            connection
                .outbound(&*routes, gateway.as_ref(), parts, body, upgrade, &mut exchange)
                .await
        }
        Side::Inbound(app) => {
            exchange.access_log = connection.proxy.access_log_on();
            connection
                .inbound(app, parts, body, upgrade, &mut exchange)
                .await
        }
    };
    let (response, grpc_status) = if exchange.grpc {
        grpc_local_reply((response, grpc_status))
    } else {
        (response, grpc_status)
    };
    exchange::track(response, grpc_status, exchange)
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
