//! Responses the proxy makes itself, as Envoy does: direct responses and redirects a route
//! asks for, CORS preflight answers, and the errors it answers instead of an upstream (404
//! `NR`, 429 `RL`, fault aborts `FI`, 503 `UH`/`UF`/`UO`/`UC`/`URX`/`NR`/`NC`, 504 `UT`).
//!
//! A [`LocalReply`] carries the [`ResponseFlags`] it sets on the request's exchange; text
//! replies are marked so that a gRPC client gets them as gRPC statuses
//! ([`grpc_local_reply`]). Depends on no other part of `http/` but [`super::route_policy`].
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::route_policy as policy;
use crate::response_flag::{ResponseFlag, ResponseFlags};
use crate::upstream::{Body, UpstreamError};
use shunt_mesh::routing::AbortKind;

/// A response and its gRPC status (from headers; trailers are read as the body streams).
pub type Reply = (Response<Body>, Option<u32>);

/// A response the proxy answers itself, with the flags it sets on the exchange.
pub struct LocalReply {
    pub response: Response<Body>,
    pub grpc_status: Option<u32>,
    pub flags: ResponseFlags,
}

/// Marks a text response the proxy made itself (see [`grpc_local_reply`]).
#[derive(Clone, Copy, Debug)]
struct Marker;

/// Why the proxy answered itself (`grpc-message` of a gRPC local reply).
#[derive(Clone, Debug)]
struct Reason(String);

impl LocalReply {
    /// A reply with a short plain-text reason as Envoy sends, and `flags`.
    #[must_use]
    pub fn text(status: StatusCode, reason: &str, flags: impl Into<ResponseFlags>) -> Self {
        let mut response = Response::new(full(Bytes::from(reason.to_owned())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response.extensions_mut().insert(Marker);
        response.extensions_mut().insert(Reason(reason.to_owned()));
        Self {
            response,
            grpc_status: None,
            flags: flags.into(),
        }
    }

    /// A response that is not an error: no flag, no body unless given.
    fn plain(response: Response<Body>) -> Self {
        Self {
            response,
            grpc_status: None,
            flags: ResponseFlags::NONE,
        }
    }

    /// The response and its gRPC status, for the client.
    #[must_use]
    pub fn into_reply(self) -> Reply {
        (self.response, self.grpc_status)
    }

    /// 403 `RBAC: access denied`, as Envoy's RBAC filter answers (a gRPC client gets
    /// `PERMISSION_DENIED`).
    #[must_use]
    pub fn access_denied() -> Self {
        Self::text(
            StatusCode::FORBIDDEN,
            crate::authz::DENIED_BODY,
            ResponseFlags::NONE,
        )
    }

    /// 404 `NR`: no route of the virtual host matched.
    #[must_use]
    pub fn route_not_found() -> Self {
        Self::text(
            StatusCode::NOT_FOUND,
            "route not found",
            ResponseFlag::NoRouteFound,
        )
    }

    /// 502 `NR`: `REGISTRY_ONLY` and the host is not in the registry.
    #[must_use]
    pub fn not_in_registry() -> Self {
        Self::text(
            StatusCode::BAD_GATEWAY,
            "destination not in the service registry",
            ResponseFlag::NoRouteFound,
        )
    }

    /// 503 `NR`: the route forwards to no destination (all weights 0).
    #[must_use]
    pub fn no_destination() -> Self {
        Self::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "route has no destination",
            ResponseFlag::NoRouteFound,
        )
    }

    /// 503 `NC`: the route's destination names no known cluster.
    #[must_use]
    pub fn no_cluster() -> Self {
        Self::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no cluster for destination",
            ResponseFlag::NoClusterFound,
        )
    }

    /// 503 with the error's flag (`UH`, `UO`): no endpoint to send to.
    #[must_use]
    pub fn no_healthy_upstream(error: &UpstreamError) -> Self {
        Self::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            error.response_flag(),
        )
    }

    /// 503 `URX`: a streamed body was sent once already; nothing more can be tried.
    #[must_use]
    pub fn retry_limit_exceeded() -> Self {
        Self::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry limit exceeded",
            ResponseFlag::UpstreamRetryLimitExceeded,
        )
    }

    /// 504 `UT`: the route timeout or the last attempt's per-try timeout.
    #[must_use]
    pub fn upstream_timeout() -> Self {
        Self::text(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            ResponseFlag::UpstreamRequestTimeout,
        )
    }

    /// 503 with the error's flag (`UF`, `UC`, `UO`, ...): the last attempt failed.
    #[must_use]
    pub fn upstream_failure(error: &UpstreamError) -> Self {
        Self::text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("upstream connect error or disconnect/reset before headers: {error}"),
            error.response_flag(),
        )
    }

    /// 429 `RL` with the `x-ratelimit-*` headers of Envoy's local rate limit.
    #[must_use]
    pub fn rate_limited(limit: u32, reset: std::time::Duration) -> Self {
        let mut reply = Self::text(
            StatusCode::TOO_MANY_REQUESTS,
            "local_rate_limited",
            ResponseFlag::RateLimited,
        );
        let headers = reply.response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
        // Whole seconds, rounded up: a client that waits this long gets a token.
        let reset = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        reply
    }

    /// `FI`: the fault filter's abort, an HTTP status or a trailers-only gRPC status.
    #[must_use]
    pub fn fault_abort(kind: AbortKind) -> Self {
        let (status, headers) = policy::abort_head(kind);
        let grpc_status = policy::grpc_status(&headers);
        let mut response = if grpc_status.is_some() {
            empty_response(status)
        } else {
            Self::text(status, "fault filter abort", ResponseFlags::NONE).response
        };
        response.headers_mut().extend(headers);
        Self {
            response,
            grpc_status,
            flags: ResponseFlag::FaultInjected.into(),
        }
    }

    /// 200 with the CORS preflight `answer` headers.
    #[must_use]
    pub fn cors_preflight(answer: HeaderMap) -> Self {
        let mut response = empty_response(StatusCode::OK);
        response.headers_mut().extend(answer);
        Self::plain(response)
    }

    /// A route's `redirect`: `status` with `Location` (left out if it is not a valid value).
    #[must_use]
    pub fn redirect(status: StatusCode, location: &str) -> Self {
        let mut response = empty_response(status);
        if let Ok(location) = HeaderValue::from_str(location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Self::plain(response)
    }

    /// A route's `directResponse`: `status` with `body` (empty when absent).
    #[must_use]
    pub fn direct_response(status: StatusCode, body: Option<Bytes>) -> Self {
        let mut response = Response::new(full(body.unwrap_or_default()));
        *response.status_mut() = status;
        Self::plain(response)
    }
}

/// A body of `bytes`.
#[must_use]
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// A text local reply to a gRPC request, as Envoy sends it: HTTP 200, trailers-only, with the
/// gRPC status for the HTTP one (Envoy's `Grpc::Utility::httpToGrpcStatus`) and the reason in
/// `grpc-message`. Other responses pass unchanged.
#[must_use]
pub fn grpc_local_reply((response, grpc_status): Reply) -> Reply {
    if grpc_status.is_some() || response.extensions().get::<Marker>().is_none() {
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
        .get::<Reason>()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_replies_become_grpc_statuses_for_grpc_clients() {
        let cases = [
            (LocalReply::route_not_found(), 12, "route not found", "NR"),
            (
                LocalReply::rate_limited(5, std::time::Duration::from_millis(1500)),
                14,
                "local_rate_limited",
                "RL",
            ),
            (
                LocalReply::upstream_timeout(),
                14,
                "upstream request timeout",
                "UT",
            ),
            (
                LocalReply::retry_limit_exceeded(),
                14,
                "retry limit exceeded",
                "URX",
            ),
            (
                LocalReply::no_cluster(),
                14,
                "no cluster for destination",
                "NC",
            ),
            (
                LocalReply::text(StatusCode::FORBIDDEN, "denied", ResponseFlags::NONE),
                7,
                "denied",
                "-",
            ),
        ];
        for (reply, code, message, flags) in cases {
            assert_eq!(reply.flags, flags, "{message}");
            let (response, grpc) = grpc_local_reply(reply.into_reply());
            assert_eq!(grpc, Some(code), "{message}");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], code.to_string().as_str());
            assert_eq!(response.headers()["grpc-message"], message);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn answers_that_are_not_errors_stay_as_they_are() {
        for reply in [
            LocalReply::redirect(StatusCode::MOVED_PERMANENTLY, "http://a/b"),
            LocalReply::direct_response(StatusCode::IM_A_TEAPOT, Some(Bytes::from("tea"))),
            LocalReply::cors_preflight(HeaderMap::new()),
        ] {
            assert!(reply.flags.is_empty());
            let status = reply.response.status();
            let (response, grpc) = grpc_local_reply(reply.into_reply());
            assert_eq!((response.status(), grpc), (status, None));
        }
    }

    #[test]
    fn the_rate_limit_reset_rounds_up_to_whole_seconds() {
        for (reset_ms, header) in [(0, "0"), (1, "1"), (1000, "1"), (1500, "2")] {
            let reply = LocalReply::rate_limited(7, std::time::Duration::from_millis(reset_ms));
            let headers = reply.response.headers();
            assert_eq!(reply.response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(headers["x-ratelimit-limit"], "7");
            assert_eq!(headers["x-ratelimit-remaining"], "0");
            assert_eq!(headers["x-ratelimit-reset"], header, "{reset_ms} ms");
        }
    }
}
