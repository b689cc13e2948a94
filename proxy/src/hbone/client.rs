//! The HBONE client: HTTP/2 connections over mTLS to peers' port 15008, pooled per
//! (source identity, destination identity, source IP, destination IP) as ztunnel pools them,
//! and one `CONNECT` stream per tunnelled connection.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::metrics::{HboneMetrics, OUTBOUND, Open};
use super::stream::H2Stream;
use super::error::HboneError;
use super::settings::{SETTINGS, Settings};

/// What one pooled connection is for. The source IP is part of it because the connection is
/// dialled from the source pod's netns: the destination sees, and checks, that address.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub source_identity: String,
    pub destination_identity: String,
    pub source_ip: Ipv4Addr,
    pub destination_ip: Ipv4Addr,
}

/// The headers of one `CONNECT`, as ztunnel sends them.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// `:authority`: the destination pod's IP and the target port.
    pub authority: SocketAddr,
    /// `forwarded: for="<client ip:port>"`: the application's own address.
    pub client: SocketAddr,
    /// `;host=` of `forwarded`: the Service host the client asked for, when known.
    pub service_host: Option<String>,
    /// `baggage`: the source workload, in ztunnel's keys.
    pub baggage: String,
    /// `traceparent`, when the application connection had one.
    pub traceparent: Option<String>,
}

impl ConnectRequest {
    fn to_request(&self) -> Result<Request<()>, HboneError> {
        let forwarded = match &self.service_host {
            Some(host) => format!("for=\"{}\";host={host}", self.client),
            None => format!("for=\"{}\"", self.client),
        };
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(self.authority.to_string())
            .header(super::headers::BAGGAGE, &self.baggage)
            .header(http::header::FORWARDED, forwarded);
        if let Some(traceparent) = &self.traceparent {
            builder = builder.header(super::headers::TRACEPARENT, traceparent);
        }
        builder
            .body(())
            .map_err(|error| HboneError::Request(error.to_string()))
    }
}

/// One HTTP/2 connection of the pool.
struct Connection {
    sender: SendRequest<Bytes>,
    /// Streams open on it now; at `max_streams` a new connection is opened instead.
    streams: AtomicU32,
    max_streams: u32,
    /// Set when its task ends (GOAWAY, error, failed PING, idle): never handed out again.
    closed: AtomicBool,
    /// When its last stream ended, for the idle timeout.
    idle_since: Mutex<Instant>,
}

impl Connection {
    fn try_reserve(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.streams
            .try_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
    }
}

/// A stream's hold on its connection's count; released when the stream is dropped.
struct StreamSlot {
    connection: Arc<Connection>,
    _open: Open,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.connection.release();
    }
}

type Connections = Mutex<HashMap<PoolKey, Vec<Arc<Connection>>>>;

/// The HBONE connections of the node proxy.
pub struct Pool {
    settings: Settings,
    metrics: Arc<HboneMetrics>,
    connections: Arc<Connections>,
    /// One dial at a time per key, so a burst of connections shares the connection it opens.
    dialing: Mutex<HashMap<PoolKey, Weak<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    #[must_use]
    pub fn new(metrics: Arc<HboneMetrics>) -> Self {
        Self::with_settings(SETTINGS, metrics)
    }

    #[must_use]
    pub fn with_settings(settings: Settings, metrics: Arc<HboneMetrics>) -> Self {
        Self {
            settings,
            metrics,
            connections: Arc::default(),
            dialing: Mutex::default(),
        }
    }

    /// A `CONNECT` stream to `request.authority`, on a pooled connection for `key` or, when
    /// none has room, on a new one that `dial` opens (TCP from the source pod's netns and the
    /// mTLS handshake; its errors are the caller's to name).
    pub async fn connect<D, F, IO>(
        &self,
        key: &PoolKey,
        request: &ConnectRequest,
        dial: D,
    ) -> Result<H2Stream, HboneError>
    where
        D: FnOnce() -> F,
        F: Future<Output = Result<IO, HboneError>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let request = request.to_request()?;
        let connection = match self.reserve(key) {
            Some(connection) => connection,
            None => {
                let lock = self.dial_lock(key);
                let _dialing = lock.lock().await;
                // Someone else's dial may have made room meanwhile.
                match self.reserve(key) {
                    Some(connection) => connection,
                    None => {
                        let io = dial().await.inspect_err(|error| {
                            self.metrics.failure(OUTBOUND, error.reason());
                        })?;
                        let connection = self.open(key, io).await.inspect_err(|error| {
                            self.metrics.failure(OUTBOUND, error.reason());
                        })?;
                        if !connection.try_reserve() {
                            return Err(HboneError::Closed);
                        }
                        connection
                    }
                }
            }
        };
        let slot = StreamSlot {
            _open: Open(self.metrics.stream_opened(OUTBOUND)),
            connection,
        };
        self.send(slot, request).await.inspect_err(|error| {
            self.metrics.failure(OUTBOUND, error.reason());
        })
    }

    async fn send(&self, slot: StreamSlot, request: Request<()>) -> Result<H2Stream, HboneError> {
        let mut sender = slot
            .connection
            .sender
            .clone()
            .ready()
            .await
            .map_err(|error| {
                slot.connection.closed.store(true, Ordering::Release);
                HboneError::H2(error)
            })?;
        let (response, send) = sender.send_request(request, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok(H2Stream::new(
            send,
            response.into_body(),
            Some(Arc::new(slot)),
        ))
    }

    fn reserve(&self, key: &PoolKey) -> Option<Arc<Connection>> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = connections.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Acquire));
        list.iter().find(|c| c.try_reserve()).cloned()
    }

    fn dial_lock(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut dialing = self.dialing.lock().unwrap_or_else(PoisonError::into_inner);
        dialing.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = dialing.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        dialing.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }

    /// The HTTP/2 handshake over an established mTLS stream, and the connection's task.
    async fn open<IO>(&self, key: &PoolKey, io: IO) -> Result<Arc<Connection>, HboneError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let settings = self.settings;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .initial_max_send_streams(settings.max_streams_per_connection as usize)
            .max_send_buffer_size(settings.stream_window as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let max_streams = settings
            .max_streams_per_connection
            .min(u32::try_from(connection.max_concurrent_send_streams()).unwrap_or(u32::MAX))
            .max(1);
        let pooled = Arc::new(Connection {
            sender,
            streams: AtomicU32::new(0),
            max_streams,
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let open = Open(self.metrics.connection_opened(OUTBOUND));
        let ping = connection.ping_pong();
        let task_connection = pooled.clone();
        let connections = Arc::downgrade(&self.connections);
        let task_key = key.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HBONE connection ended");
                    }
                }
                () = super::keepalive::keepalive(ping, settings) => {
                    tracing::warn!(
                        destination = %task_key.destination_ip,
                        "HBONE connection closed: the peer did not answer PING"
                    );
                }
                () = idle(&task_connection, settings.idle_timeout) => {}
            }
            task_connection.closed.store(true, Ordering::Release);
            if let Some(connections) = connections.upgrade() {
                let mut connections = connections.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(list) = connections.get_mut(&task_key) {
                    list.retain(|c| !Arc::ptr_eq(c, &task_connection));
                    if list.is_empty() {
                        connections.remove(&task_key);
                    }
                }
            }
        });
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .push(pooled.clone());
        Ok(pooled)
    }

    /// Open connections now, for tests and `/debug`.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|list| {
                list.iter()
                    .filter(|c| !c.closed.load(Ordering::Acquire))
                    .count()
            })
            .sum()
    }
}

/// Resolves once `connection` has had no stream for `timeout`.
async fn idle(connection: &Connection, timeout: Duration) {
    loop {
        let since = *connection
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tokio::time::sleep_until(since + timeout).await;
        let since_now = *connection
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connection.streams.load(Ordering::Acquire) == 0 && since_now == since {
            // Claim it so no stream starts on a connection about to close.
            if connection
                .streams
                .compare_exchange(0, u32::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
        if connection.streams.load(Ordering::Acquire) > 0 {
            // In use: check again a whole timeout after it next goes idle.
            tokio::time::sleep(timeout).await;
        }
    }
}

#[cfg(test)]
#[path = "client/tests.rs"]
mod tests;
