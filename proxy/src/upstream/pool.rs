//! Connection pools to one cluster's endpoints, on hyper's connection-level client, with the
//! DestinationRule `connectionPool` limits (which hyper-util's pooled client cannot express).
//!
//! HTTP/1: idle connections are reused last-in first-out, one request at a time; a
//! connection goes back to the pool when its response body ends, unless it served
//! `maxRequestsPerConnection`, the response said `Connection: close`, or it was upgraded.
//! h2: one shared connection per endpoint; another opens when every open one carries
//! [`H2_STREAMS_PER_CONNECTION`] streams (or is dead or retired).
//!
//! A connection delivered straight to a pod served on this node ([`Delivery`]) is reused only
//! while that pod is served; its requests in flight count among that pod's connections, so a
//! removed pod's drain waits for them and then cuts the connection: a removed pod's
//! connections never linger in another pod's pools.
#![forbid(unsafe_code)]

use shunt_mesh::ids::EndpointAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::body::{Body, HttpVersion};
use super::dial::{Delivery, Dial, Dialed, Tunnel};
use super::error::UpstreamError;
use super::metrics::{ClusterLabels, UpstreamMetrics};
use super::transport::Transport;

/// Streams per h2 connection before another connection opens. Peers commonly advertise
/// 100 or more; past that hyper would queue streams on the connection.
pub(super) const H2_STREAMS_PER_CONNECTION: u32 = 100;

/// The `connectionPool` limits in force, with Istio's "unset = unlimited".
#[derive(Clone, Debug)]
pub(super) struct Limits {
    pub(super) max_connections: u32,
    pub(super) max_pending: u32,
    pub(super) max_requests: u32,
    pub(super) max_per_connection: Option<u32>,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) connect_timeout: Duration,
}

/// A count held while the guard lives.
#[derive(Debug)]
pub(super) struct Counted(Arc<AtomicU32>);

impl Counted {
    pub(super) fn acquire(counter: &Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }

    /// One more unless `max` are held already.
    pub(super) fn try_acquire(counter: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        let mut current = counter.load(Ordering::Acquire);
        while current < max {
            match counter.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Self(counter.clone())),
                Err(actual) => current = actual,
            }
        }
        None
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cluster-wide pool state: counts that the limits apply to, and a wake-up for requests
/// waiting for a connection.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) cluster: String,
    pub(super) connections: Arc<AtomicU32>,
    pub(super) pending: Arc<AtomicU32>,
    pub(super) requests: Arc<AtomicU32>,
    pub(super) retries: Arc<AtomicU32>,
    /// Opaque TCP connections open now (each also holds a [`ConnectionSlot`]).
    pub(super) tcp: Arc<AtomicU32>,
    /// Notified when a connection closes or goes back to the pool.
    released: Notify,
    connections_gauge: Gauge,
    pub(super) metrics: Arc<UpstreamMetrics>,
}

impl Shared {
    pub(super) fn new(cluster: String, metrics: Arc<UpstreamMetrics>) -> Self {
        let connections_gauge = metrics
            .connections
            .get_or_create(&ClusterLabels {
                cluster: cluster.clone(),
            })
            .clone();
        Self {
            cluster,
            connections: Arc::default(),
            pending: Arc::default(),
            requests: Arc::default(),
            retries: Arc::default(),
            tcp: Arc::default(),
            released: Notify::new(),
            connections_gauge,
            metrics,
        }
    }

    pub(super) fn overflow(&self, limit: &'static str) -> UpstreamError {
        self.metrics.overflow(&self.cluster, limit);
        UpstreamError::Overflow {
            cluster: self.cluster.clone(),
            limit,
        }
    }
}

/// One open connection's share of `maxConnections`, held by the task that drives it (or,
/// for opaque TCP, by the proxied connection).
pub(super) struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    pub(super) fn try_reserve(shared: &Arc<Shared>, max: u32) -> Option<Self> {
        let counted = Counted::try_acquire(&shared.connections, max)?;
        // The slot's own drop does the decrement.
        std::mem::forget(counted);
        shared.connections_gauge.inc();
        Some(Self(shared.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.connections_gauge.dec();
        self.0.released.notify_waiters();
    }
}

struct H1Connection {
    sender: http1::SendRequest<Body>,
    served: u32,
    delivered: Option<Delivery>,
    tunnel: Option<Tunnel>,
}

impl H1Connection {
    /// Open, and (for a same-node delivery) its pod still served.
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.delivered.as_ref().is_none_or(Delivery::reusable)
    }
}

struct IdleConnection {
    connection: H1Connection,
    since: Instant,
}

struct H2Connection {
    sender: http2::SendRequest<Body>,
    streams: Arc<AtomicU32>,
    served: AtomicU32,
    retired: AtomicBool,
    idle_since: Mutex<Instant>,
    delivered: Option<Delivery>,
    tunnel: Option<Tunnel>,
}

impl H2Connection {
    fn usable(&self) -> bool {
        !self.retired.load(Ordering::Acquire)
            && !self.sender.is_closed()
            && self.delivered.as_ref().is_none_or(Delivery::reusable)
    }

    fn claim(self: &Arc<Self>, limits: &Limits) -> H2Stream {
        let served = self.served.fetch_add(1, Ordering::AcqRel) + 1;
        if limits.max_per_connection.is_some_and(|max| served >= max) {
            self.retired.store(true, Ordering::Release);
        }
        H2Stream {
            _count: Counted::acquire(&self.streams),
            connection: self.clone(),
        }
    }
}

/// One stream on an h2 connection; its end starts the connection's idle time when it was
/// the last.
struct H2Stream {
    _count: Counted,
    connection: Arc<H2Connection>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // `_count` drops after this body: the last stream sees 1.
        if self.connection.streams.load(Ordering::Acquire) <= 1
            && let Ok(mut since) = self.connection.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// The connections to one endpoint.
pub(super) struct EndpointPool {
    addr: EndpointAddr,
    idle: Mutex<Vec<IdleConnection>>,
    h2: Mutex<Vec<Arc<H2Connection>>>,
    /// One h2 dial at a time, so a burst of requests shares the connection it opens.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl EndpointPool {
    pub(super) fn new(addr: EndpointAddr) -> Self {
        Self {
            addr,
            idle: Mutex::default(),
            h2: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The most recently idled live HTTP/1 connection; expired ones are closed.
    fn take_idle(&self, idle_timeout: Option<Duration>) -> Option<H1Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(candidate) = idle.pop() {
            if idle_timeout.is_some_and(|t| candidate.since.elapsed() >= t) {
                // Older ones sit below it: expired too.
                idle.clear();
                return None;
            }
            if candidate.connection.usable() {
                return Some(candidate.connection);
            }
        }
        None
    }

    fn put_idle(&self, connection: H1Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(IdleConnection {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Closes the oldest idle HTTP/1 connection, if any; true if it did.
    pub(super) fn evict_one_idle(&self) -> bool {
        self.idle.lock().is_ok_and(|mut idle| {
            let any = !idle.is_empty();
            if any {
                idle.remove(0);
            }
            any
        })
    }

    /// Closes connections idle for `idle_timeout` or already closed by the peer.
    pub(super) fn prune(&self, idle_timeout: Option<Duration>) {
        let expired = |since: Instant| idle_timeout.is_some_and(|t| since.elapsed() >= t);
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| !expired(c.since) && c.connection.usable());
        }
        if let Ok(mut h2) = self.h2.lock() {
            h2.retain(|c| {
                let idle = c.streams.load(Ordering::Acquire) == 0
                    && c.idle_since.lock().is_ok_and(|since| expired(*since));
                c.usable() && !idle
            });
        }
    }

    /// (idle HTTP/1 connections, open h2 connections), for the dump.
    pub(super) fn counts(&self) -> (usize, usize) {
        (
            self.idle.lock().map_or(0, |idle| idle.len()),
            self.h2.lock().map_or(0, |h2| h2.len()),
        )
    }

    /// A stream on the least loaded live h2 connection, if one has room (`room`: below
    /// [`H2_STREAMS_PER_CONNECTION`]; otherwise any live one).
    fn claim_h2(&self, limits: &Limits, room: bool) -> Option<H2Stream> {
        let mut h2 = self.h2.lock().ok()?;
        h2.retain(|c| c.usable());
        let connection = h2
            .iter()
            .filter(|c| !room || c.streams.load(Ordering::Acquire) < H2_STREAMS_PER_CONNECTION)
            .min_by_key(|c| c.streams.load(Ordering::Acquire))?;
        Some(connection.claim(limits))
    }
}

/// What a response body releases when it ends: the HTTP/1 connection back to its pool, and
/// the counts the request held.
pub(super) struct Release {
    h1: Option<(H1Connection, Arc<EndpointPool>)>,
    shared: Arc<Shared>,
    _request: Counted,
    _active: Counted,
    _stream: Option<H2Stream>,
    /// A request delivered to a pod served on this node counts among that pod's connections
    /// until its response ends, so the pod's drain waits for it (and cuts it at the deadline).
    _destination: Option<TaskTrackerToken>,
}

/// The body of an upstream response. Ending it (reading to the end) returns the HTTP/1
/// connection to the pool; dropping it early closes that connection. Either way the
/// request stops counting as active.
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
    /// The pod served here the request went to, when it was delivered on this node (in the
    /// body rather than the response's extensions: no map to allocate per response).
    delivered: Option<Delivery>,
    /// The HBONE tunnel the request went through, if it did.
    tunnel: Option<Tunnel>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .field("pending_release", &self.release.is_some())
            .finish()
    }
}

impl UpstreamBody {
    fn new(
        inner: Incoming,
        release: Release,
        delivered: Option<Delivery>,
        tunnel: Option<Tunnel>,
    ) -> Self {
        let mut body = Self {
            inner,
            release: Some(release),
            delivered,
            tunnel,
        };
        // A body that is empty from the start (HEAD, 204, 304, 101) may never be polled.
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        body
    }

    /// Where the request was delivered on this node, if it was.
    #[must_use]
    pub fn delivered(&self) -> Option<&Delivery> {
        self.delivered.as_ref()
    }

    /// The HBONE tunnel the request went through, if it did.
    #[must_use]
    pub fn tunnel(&self) -> Option<&Tunnel> {
        self.tunnel.as_ref()
    }

    fn finish(&mut self, complete: bool) {
        let Some(release) = self.release.take() else {
            return;
        };
        if complete && let Some((connection, pool)) = release.h1 {
            pool.put_idle(connection);
        }
        release.shared.released.notify_waiters();
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(true),
            _ => {}
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

/// Dials and reuses connections for one cluster.
pub(super) struct Dialer {
    pub(super) dial: Arc<dyn Dial>,
    pub(super) shared: Arc<Shared>,
}

/// Counts a request holds for its whole life (until its response body ends).
pub(super) struct RequestCounts {
    pub(super) request: Counted,
    pub(super) active: Counted,
}

impl Dialer {
    /// Sends `request` on a pooled or new connection to `pool`'s endpoint. `evict` closes an
    /// idle connection to another endpoint of the cluster (true if there was one), to make
    /// room under `maxConnections`.
    pub(super) async fn send(
        &self,
        pool: &Arc<EndpointPool>,
        limits: &Limits,
        request: http::Request<Body>,
        version: HttpVersion,
        evict: &(dyn Fn() -> bool + Send + Sync),
        counts: RequestCounts,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let addr = pool.addr;
        let reset = |source| UpstreamError::Reset { addr, source };
        match version {
            HttpVersion::Http1 => {
                let mut connection = self.checkout_h1(pool, limits, evict).await?;
                let destination = connection.delivered.as_ref().map(|d| d.drain.hold());
                connection.served += 1;
                let connect = request.method() == Method::CONNECT;
                let response = connection
                    .sender
                    .send_request(request)
                    .await
                    .map_err(reset)?;
                let delivered = connection.delivered.clone();
                let tunnel = connection.tunnel.clone();
                let status = response.status();
                let reusable = limits
                    .max_per_connection
                    .is_none_or(|max| connection.served < max)
                    && status != StatusCode::SWITCHING_PROTOCOLS
                    && !(connect && status.is_success())
                    && !closes(response.headers());
                let release = Release {
                    h1: reusable.then(|| (connection, pool.clone())),
                    shared: self.shared.clone(),
                    _request: counts.request,
                    _active: counts.active,
                    _stream: None,
                    _destination: destination,
                };
                Ok(response.map(|body| UpstreamBody::new(body, release, delivered, tunnel)))
            }
            HttpVersion::Http2 => {
                let stream = self.checkout_h2(pool, limits, evict).await?;
                let destination = stream.connection.delivered.as_ref().map(|d| d.drain.hold());
                let mut sender = stream.connection.sender.clone();
                let response = sender.send_request(request).await.map_err(reset)?;
                let delivered = stream.connection.delivered.clone();
                let tunnel = stream.connection.tunnel.clone();
                let release = Release {
                    h1: None,
                    shared: self.shared.clone(),
                    _request: counts.request,
                    _active: counts.active,
                    _stream: Some(stream),
                    _destination: destination,
                };
                Ok(response.map(|body| UpstreamBody::new(body, release, delivered, tunnel)))
            }
        }
    }

    async fn checkout_h1(
        &self,
        pool: &EndpointPool,
        limits: &Limits,
        evict: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<H1Connection, UpstreamError> {
        // The common case, an idle connection, needs no place among the waiters.
        if let Some(connection) = Self::ready_idle(pool, limits).await {
            return Ok(connection);
        }
        let mut pending = None;
        loop {
            // Registered before looking, so a release between the look and the wait counts.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(connection) = Self::ready_idle(pool, limits).await {
                return Ok(connection);
            }
            if let Some(slot) = ConnectionSlot::try_reserve(&self.shared, limits.max_connections) {
                return self.connect_h1(pool.addr, limits, slot).await;
            }
            self.wait_turn(&mut pending, limits, evict)?;
            released.await;
        }
    }

    /// The most recently idled HTTP/1 connection that is still ready for a request.
    async fn ready_idle(pool: &EndpointPool, limits: &Limits) -> Option<H1Connection> {
        while let Some(mut connection) = pool.take_idle(limits.idle_timeout) {
            if connection.sender.ready().await.is_ok() {
                return Some(connection);
            }
        }
        None
    }

    async fn checkout_h2(
        &self,
        pool: &EndpointPool,
        limits: &Limits,
        evict: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<H2Stream, UpstreamError> {
        let mut pending = None;
        loop {
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(stream) = pool.claim_h2(limits, true) {
                return Ok(stream);
            }
            {
                let _dialing = pool.h2_connecting.lock().await;
                if let Some(stream) = pool.claim_h2(limits, true) {
                    return Ok(stream);
                }
                if let Some(slot) =
                    ConnectionSlot::try_reserve(&self.shared, limits.max_connections)
                {
                    let connection = self.connect_h2(pool.addr, limits, slot).await?;
                    let stream = connection.claim(limits);
                    if let Ok(mut h2) = pool.h2.lock() {
                        h2.push(connection);
                    }
                    return Ok(stream);
                }
                // At maxConnections: multiplex past the soft stream cap rather than wait.
                if let Some(stream) = pool.claim_h2(limits, false) {
                    return Ok(stream);
                }
            }
            self.wait_turn(&mut pending, limits, evict)?;
            released.await;
        }
    }

    /// Before waiting for a connection: make room by closing an idle connection elsewhere,
    /// or else queue as a pending request (Overflow beyond `http1MaxPendingRequests`).
    fn wait_turn(
        &self,
        pending: &mut Option<Counted>,
        limits: &Limits,
        evict: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<(), UpstreamError> {
        if pending.is_none() && !evict() {
            *pending = Some(
                Counted::try_acquire(&self.shared.pending, limits.max_pending)
                    .ok_or_else(|| self.shared.overflow("max_pending_requests"))?,
            );
        }
        Ok(())
    }

    async fn dial(
        &self,
        addr: EndpointAddr,
        limits: &Limits,
    ) -> Result<(TokioIo<Transport>, Option<Delivery>, Option<Tunnel>), UpstreamError> {
        // A pooled connection carries many clients' requests: no one client to name.
        let Dialed {
            stream,
            delivered,
            tunnel,
        } = self
            .dial
            .dial(addr.socket_addr(), limits.connect_timeout, None)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr,
                source: Box::new(source),
            })?;
        Ok((TokioIo::new(stream), delivered, tunnel))
    }

    async fn connect_h1(
        &self,
        addr: EndpointAddr,
        limits: &Limits,
        slot: ConnectionSlot,
    ) -> Result<H1Connection, UpstreamError> {
        let (io, delivered, tunnel) = self.dial(addr, limits).await?;
        // One flat buffer per write: `send(2)` rather than `writev(2)`, whose trip through
        // the VFS layers cost more than copying a small body (HAProxy writes the same way).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        let cut = delivered.as_ref().map(|d| d.drain.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // Upgrades: the connection hands its socket to `hyper::upgrade::on(response)`.
            let ended = tokio::select! {
                biased;
                () = crate::drain::force_closed(cut.as_ref()) => None,
                ended = connection.with_upgrades() => Some(ended),
            };
            if let Some(Err(error)) = ended {
                tracing::debug!(%error, %addr, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(H1Connection {
            sender,
            served: 0,
            delivered,
            tunnel,
        })
    }

    async fn connect_h2(
        &self,
        addr: EndpointAddr,
        limits: &Limits,
        slot: ConnectionSlot,
    ) -> Result<Arc<H2Connection>, UpstreamError> {
        let (io, delivered, tunnel) = self.dial(addr, limits).await?;
        let handshake = http2::handshake(TokioExecutor::new(), io);
        let (sender, connection) = tokio::time::timeout(limits.connect_timeout, handshake)
            .await
            .map_err(|_| UpstreamError::HandshakeTimeout {
                addr,
                timeout: limits.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        let cut = delivered.as_ref().map(|d| d.drain.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let ended = tokio::select! {
                biased;
                () = crate::drain::force_closed(cut.as_ref()) => None,
                ended = connection => Some(ended),
            };
            if let Some(Err(error)) = ended {
                tracing::debug!(%error, %addr, "upstream h2 connection ended with an error");
            }
        });
        Ok(Arc::new(H2Connection {
            sender,
            streams: Arc::default(),
            served: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            delivered,
            tunnel,
        }))
    }
}

/// Whether an HTTP/1 response ends its connection (`Connection: close`).
fn closes(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}
