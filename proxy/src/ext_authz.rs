//! The HTTP ext_authz client: AuthorizationPolicy `action: CUSTOM` asks the MeshConfig
//! `envoyExtAuthzHttp` provider it names, as Envoy's `ext_authz` filter does over its HTTP
//! service.
//!
//! The check request ([`check_request`]) is the client's request without its body: the same
//! method, `pathPrefix` + the original path and query, `Host` = the original authority,
//! `Content-Length: 0`, `Authorization`, the headers `includeRequestHeadersInCheck` matches
//! (repeated ones joined with `,`, as Envoy's check request carries them) and the fixed
//! `includeAdditionalHeadersInCheck`, which override. HTTP/1.1, one check per connection at a
//! time, idle connections reused per [`Connector::reuse_key`].
//!
//! The answer ([`ExtAuthzOutcome`]), as Envoy reads it:
//! - `200`: allowed. Headers `headersToUpstreamOnAllow` matches are set on the request (the
//!   last of a repeated one wins, as Envoy's `setCopy`), those `headersToDownstreamOnAllow`
//!   matches are added to the response, and the names listed in
//!   `x-envoy-auth-headers-to-remove` are removed from the request (never a pseudo-header or
//!   `Host`).
//! - `5xx`, no connection, a reset or the provider's `timeout`: an error. With `failOpen` the
//!   request goes on, marked `x-envoy-auth-failure-mode-allowed: true`; otherwise it gets
//!   `statusOnError` (403 by default) with an empty body.
//! - any other status: denied with that status and the service's body; its headers are the
//!   ones `headersToDownstreamOnDeny` matches plus `WWW-Authenticate` and `Location`, or, with
//!   no list, all but `Host`.
//!
//! Connection-level headers (`Connection`, `Transfer-Encoding`, ...) and `Content-Length` never
//! cross from one message to another: they describe a hop, not the request.
//!
//! The seam: a [`Connector`] dials the provider's service, so the caller chooses the netns,
//! the endpoint and the transport (plain TCP, or an HBONE tunnel); tests dial loopback.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use shunt_mesh::ext_authz::{ExtAuthzHttp, any_matches};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Set on a request that [`ExtAuthzHttp::fail_open`] let through, as Envoy does.
pub static FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");
/// An allowing answer lists here the request headers to remove.
pub static HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// The largest answer body read; a denial's body is for a person, not a payload.
pub const MAX_ANSWER_BODY: usize = 1 << 20;
/// Idle connections kept per key.
const MAX_IDLE_PER_KEY: usize = 8;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// keep-alive connections (Go's default is 90 s), and a reuse racing that close costs a retry.
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// A stream to the provider's service.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// What [`Connector::connect`] returns.
pub type Stream = Box<dyn Io>;
/// What [`Connector::connect`] returns, as a future.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + 'a>>;

/// Dials the provider's service: [`ExtAuthzHttp::host`] (in [`ExtAuthzHttp::namespace`] when
/// given) on [`ExtAuthzHttp::port`], from wherever the caller decides (the destination pod's
/// netns, as the sidecar that runs the check would).
pub trait Connector: Send + Sync {
    /// One new connection. The provider's `timeout` bounds it with the rest of the check.
    fn connect<'a>(&'a self, provider: &'a ExtAuthzHttp) -> Connecting<'a>;

    /// Connections made by connectors with the same key (and to the same provider service)
    /// are interchangeable, so an idle one is reused by a later check (e.g. the dialling
    /// pod's uid). `None`: never reused.
    fn reuse_key(&self) -> Option<&str> {
        None
    }
}

/// Why a check got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The request could not be put into a check request.
    #[error("building the ext_authz check request: {0}")]
    Request(#[source] http::Error),
    /// [`Connector::connect`] failed.
    #[error("connecting to the ext_authz service {service} port {port}: {source}")]
    Connect {
        /// The provider's `service`.
        service: String,
        /// Its `port`.
        port: u16,
        /// What the dial said.
        #[source]
        source: io::Error,
    },
    /// The HTTP/1.1 exchange failed (handshake, reset, malformed answer).
    #[error("talking HTTP/1.1 to the ext_authz service {service} port {port}: {source}")]
    Exchange {
        /// The provider's `service`.
        service: String,
        /// Its `port`.
        port: u16,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The answer's body was larger than [`MAX_ANSWER_BODY`], or broke off.
    #[error(
        "reading the answer of the ext_authz service {service} port {port}: {message} (at \
         most {MAX_ANSWER_BODY} bytes are read)"
    )]
    Body {
        /// The provider's `service`.
        service: String,
        /// Its `port`.
        port: u16,
        /// What went wrong.
        message: String,
    },
    /// No answer within the provider's `timeout`.
    #[error(
        "the ext_authz service {service} port {port} did not answer within {timeout:?} (the \
         provider's timeout)"
    )]
    Timeout {
        /// The provider's `service`.
        service: String,
        /// Its `port`.
        port: u16,
        /// The provider's `timeout`.
        timeout: Duration,
    },
    /// The service answered 5xx, which Envoy takes as a failure to decide.
    #[error("the ext_authz service {service} port {port} answered {status}")]
    ServerError {
        /// The provider's `service`.
        service: String,
        /// Its `port`.
        port: u16,
        /// The status it answered.
        status: StatusCode,
    },
}

/// What the check decided.
#[derive(Debug)]
pub enum ExtAuthzOutcome {
    /// The request goes on, changed as [`Allowed::apply_to_request`] says.
    Allow(Allowed),
    /// The request is answered with [`Denied::into_response`].
    Deny(Denied),
}

impl ExtAuthzOutcome {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a request the check stopped
    /// (`ext_authz_denied`, `ext_authz_error`); `None` when it goes on.
    #[must_use]
    pub fn response_code_details(&self) -> Option<&'static str> {
        match self {
            Self::Allow(_) => None,
            Self::Deny(Denied { error: None, .. }) => Some("ext_authz_denied"),
            Self::Deny(Denied { error: Some(_), .. }) => Some("ext_authz_error"),
        }
    }

    /// Whether the request goes on.
    #[must_use]
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// An allowed request's changes.
#[derive(Debug, Default)]
pub struct Allowed {
    /// Set on the request (replacing what it had under those names).
    pub upstream_headers: HeaderMap,
    /// Removed from the request (`x-envoy-auth-headers-to-remove`), after the sets.
    pub remove_upstream: Vec<HeaderName>,
    /// Added to the response the client gets.
    pub downstream_headers: HeaderMap,
    /// `Some`: the check failed and `failOpen` let the request through.
    pub failed_open: Option<CheckError>,
}

impl Allowed {
    /// Sets and removes the request headers the answer asked for.
    pub fn apply_to_request(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.upstream_headers {
            headers.insert(name, value.clone());
        }
        for name in &self.remove_upstream {
            headers.remove(name);
        }
    }

    /// Adds the answer's headers for the client to its response.
    pub fn apply_to_response(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.downstream_headers {
            headers.append(name, value.clone());
        }
    }
}

/// A denied request's answer.
#[derive(Debug)]
pub struct Denied {
    /// The service's status, or `statusOnError`.
    pub status: StatusCode,
    /// The service's headers the client gets (without `Content-Length`, which follows
    /// `body`).
    pub headers: HeaderMap,
    /// The service's body (empty after an error).
    pub body: Bytes,
    /// `Some`: the service gave no usable answer and `failOpen` is off; `status` is
    /// `statusOnError`.
    pub error: Option<CheckError>,
}

impl Denied {
    /// The response for the client.
    #[must_use]
    pub fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Idle connections by (reuse key, service, port).
type IdleKey = (String, String, u16);

struct IdleConnection {
    sender: http1::SendRequest<Empty<Bytes>>,
    since: Instant,
}

/// The client, shared by every check of the proxy (it holds the idle connections).
#[derive(Default)]
pub struct ExtAuthz {
    idle: Mutex<HashMap<IdleKey, Vec<IdleConnection>>>,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz").finish_non_exhaustive()
    }
}

/// An answer: its status, headers and body.
type Answer = (StatusCode, HeaderMap, Bytes);

impl ExtAuthz {
    /// A client with no connections yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks `provider` about the request `parts` describes, through `connector`, and
    /// decides as Envoy does (see the module's docs). Never longer than the provider's
    /// `timeout`.
    pub async fn check(
        &self,
        provider: &ExtAuthzHttp,
        parts: &http::request::Parts,
        connector: &dyn Connector,
    ) -> ExtAuthzOutcome {
        let answer =
            tokio::time::timeout(provider.timeout, self.exchange(provider, parts, connector))
                .await
                .unwrap_or_else(|_| {
                    Err(CheckError::Timeout {
                        service: provider.service.clone(),
                        port: provider.port,
                        timeout: provider.timeout,
                    })
                });
        match answer {
            Ok((status, headers, body)) => decide(provider, status, headers, body),
            Err(error) => on_error(provider, error),
        }
    }

    /// Number of idle connections kept, for tests and debugging.
    #[must_use]
    pub fn idle_connections(&self) -> usize {
        self.lock_idle().values().map(Vec::len).sum()
    }

    async fn exchange(
        &self,
        provider: &ExtAuthzHttp,
        parts: &http::request::Parts,
        connector: &dyn Connector,
    ) -> Result<Answer, CheckError> {
        let key = connector
            .reuse_key()
            .map(|key| (key.to_owned(), provider.service.clone(), provider.port));
        let mut request = check_request(provider, parts).map_err(CheckError::Request)?;
        if let Some(key) = &key {
            while let Some(mut idle) = self.take_idle(key) {
                if idle.ready().await.is_err() {
                    continue;
                }
                match idle.try_send_request(request).await {
                    Ok(response) => {
                        return self.read_answer(provider, response, idle, key).await;
                    }
                    Err(mut failed) => match failed.take_message() {
                        // Never sent (the connection had closed): the next one gets it.
                        Some(back) => request = back,
                        // Sent on a connection the server was closing: a check changes
                        // nothing, so asking again on a fresh connection is safe.
                        None => {
                            request =
                                check_request(provider, parts).map_err(CheckError::Request)?;
                            break;
                        }
                    },
                }
            }
        }
        let exchange_error = |source| CheckError::Exchange {
            service: provider.service.clone(),
            port: provider.port,
            source,
        };
        let stream = connector
            .connect(provider)
            .await
            .map_err(|source| CheckError::Connect {
                service: provider.service.clone(),
                port: provider.port,
                source,
            })?;
        let (mut sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(exchange_error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "ext_authz connection ended with an error");
            }
        });
        let response = sender.send_request(request).await.map_err(exchange_error)?;
        match &key {
            Some(key) => self.read_answer(provider, response, sender, key).await,
            None => read_body(provider, response).await,
        }
    }

    /// Reads the answer, then keeps the connection for the next check if it stays open.
    async fn read_answer(
        &self,
        provider: &ExtAuthzHttp,
        response: Response<hyper::body::Incoming>,
        sender: http1::SendRequest<Empty<Bytes>>,
        key: &IdleKey,
    ) -> Result<Answer, CheckError> {
        let answer = read_body(provider, response).await?;
        if !sender.is_closed() {
            let mut idle = self.lock_idle();
            let kept = idle.entry(key.clone()).or_default();
            if kept.len() < MAX_IDLE_PER_KEY {
                kept.push(IdleConnection {
                    sender,
                    since: Instant::now(),
                });
            }
        }
        Ok(answer)
    }

    fn take_idle(&self, key: &IdleKey) -> Option<http1::SendRequest<Empty<Bytes>>> {
        let mut idle = self.lock_idle();
        let kept = idle.get_mut(key)?;
        let found = loop {
            let Some(connection) = kept.pop() else {
                break None;
            };
            if !connection.sender.is_closed() && connection.since.elapsed() < MAX_IDLE_AGE {
                break Some(connection.sender);
            }
        };
        if kept.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<IdleKey, Vec<IdleConnection>>> {
        // The map is consistent after every statement; a panic elsewhere does not spoil it.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn read_body(
    provider: &ExtAuthzHttp,
    response: Response<hyper::body::Incoming>,
) -> Result<Answer, CheckError> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BODY)
        .collect()
        .await
        .map_err(|error| CheckError::Body {
            service: provider.service.clone(),
            port: provider.port,
            message: error.to_string(),
        })?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// Headers that belong to one connection, or to one message's framing, never copied between
/// messages.
fn is_connection_header(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TE,
        &header::UPGRADE,
        &header::CONTENT_LENGTH,
        &header::TRAILER,
    ]
    .contains(&name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// The check request for the client request `parts` describes (see the module's docs).
///
/// # Errors
/// When the prefixed path is not a valid request target.
pub fn check_request(
    provider: &ExtAuthzHttp,
    parts: &http::request::Parts,
) -> Result<Request<Empty<Bytes>>, http::Error> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let target = format!("{}{path}", provider.path_prefix);
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(target.parse::<Uri>().map_err(http::Error::from)?)
        .body(Empty::new())?;
    let headers = request.headers_mut();
    // h2 carries the authority in the URI, HTTP/1.1 in `Host`.
    let authority = parts
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    if let Some(authority) = authority {
        headers.insert(header::HOST, authority);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for name in parts.headers.keys() {
        if name == header::HOST || is_connection_header(name) {
            continue;
        }
        if name != header::AUTHORIZATION
            && !any_matches(&provider.include_request_headers, name.as_str())
        {
            continue;
        }
        if let Some(value) = joined(&parts.headers, name) {
            headers.insert(name.clone(), value);
        }
    }
    for (name, value) in &provider.include_additional_headers {
        // Checked when the provider was read; one that fails now is left out, not guessed.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    Ok(request)
}

/// A header's values joined with `,`, as one entry of Envoy's check request headers.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut bytes = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        bytes.push(b',');
        bytes.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&bytes).ok()
}

/// What an answer decides (see the module's docs).
#[must_use]
pub fn decide(
    provider: &ExtAuthzHttp,
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
) -> ExtAuthzOutcome {
    if status.is_server_error() {
        return on_error(
            provider,
            CheckError::ServerError {
                service: provider.service.clone(),
                port: provider.port,
                status,
            },
        );
    }
    let to_remove: Vec<HeaderName> = headers
        .get_all(&HEADERS_TO_REMOVE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        // Removing `Host` would leave the request without an authority.
        .filter(|name| name != header::HOST)
        .collect();
    headers.remove(&HEADERS_TO_REMOVE);
    if status == StatusCode::OK {
        let mut allowed = Allowed {
            remove_upstream: to_remove,
            ..Allowed::default()
        };
        for (name, value) in &headers {
            if is_connection_header(name) {
                continue;
            }
            if any_matches(&provider.headers_to_upstream_on_allow, name.as_str()) {
                allowed.upstream_headers.insert(name, value.clone());
            }
            if any_matches(&provider.headers_to_downstream_on_allow, name.as_str()) {
                allowed.downstream_headers.append(name, value.clone());
            }
        }
        return ExtAuthzOutcome::Allow(allowed);
    }
    let listed = &provider.headers_to_downstream_on_deny;
    let mut client = HeaderMap::new();
    for (name, value) in &headers {
        let passes = if listed.is_empty() {
            name != header::HOST
        } else {
            any_matches(listed, name.as_str())
                || name == header::WWW_AUTHENTICATE
                || name == header::LOCATION
        };
        if passes && !is_connection_header(name) {
            client.append(name, value.clone());
        }
    }
    // Envoy's local reply names a body's type when the service did not.
    if !body.is_empty() && !client.contains_key(header::CONTENT_TYPE) {
        client.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    ExtAuthzOutcome::Deny(Denied {
        status,
        headers: client,
        body,
        error: None,
    })
}

/// No usable answer: `failOpen` lets the request through, else `statusOnError`.
#[must_use]
pub fn on_error(provider: &ExtAuthzHttp, error: CheckError) -> ExtAuthzOutcome {
    if provider.fail_open {
        let mut upstream_headers = HeaderMap::new();
        upstream_headers.insert(&FAILURE_MODE_ALLOWED, HeaderValue::from_static("true"));
        return ExtAuthzOutcome::Allow(Allowed {
            upstream_headers,
            failed_open: Some(error),
            ..Allowed::default()
        });
    }
    ExtAuthzOutcome::Deny(Denied {
        status: StatusCode::from_u16(provider.status_on_error).unwrap_or(StatusCode::FORBIDDEN),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        error: Some(error),
    })
}

#[cfg(test)]
mod tests;
