//! Span export, off the request path: requests hand finished spans to a bounded queue
//! ([`SpanQueue::push`] never waits: a full queue drops the span and counts it), and one task
//! drains it in batches to the mesh's tracing providers: Zipkin v2 JSON (`POST
//! /api/v2/spans`), OTLP HTTP/protobuf (`POST /v1/traces`) and OTLP gRPC
//! (`TraceService/Export`, one unary call per batch over HTTP/2). A slow or dead collector
//! only fills the queue.
//!
//! The collector is a Service host of the mesh, dialled at a ready pod behind it (the same
//! lookup as ext_authz providers) from the proxy's own netns, marked
//! [`shunt_common::PROXY_MARK`] so the programs never capture the export itself.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use shunt_mesh::index::MeshIndex;
use shunt_mesh::trace_config::{TraceProtocol, TracingProvider, TracingSettings};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::trace::{Span, zipkin_json};
use super::trace_otlp::{export_request, grpc_frame};

/// The gRPC method OTLP collectors serve on 4317.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Spans waiting for export at most; past it they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans in one export request at most.
pub const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "tracing provider {provider}: no ready pod behind {host}:{port} (check that the \
         collector's Service exists in the mesh, by its FQDN, and has ready endpoints)"
    )]
    NoCollector {
        provider: String,
        host: String,
        port: u16,
    },
    #[error("tracing provider {provider}: cannot reach the collector at {addr}: {source}")]
    Connect {
        provider: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tracing provider {provider}: the export to {addr} failed: {source}")]
    Http {
        provider: String,
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error(
        "tracing provider {provider}: the export to {addr} took longer than its timeout {timeout:?}"
    )]
    Timeout {
        provider: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("tracing provider {provider}: the collector at {addr} answered {status}")]
    Status {
        provider: String,
        addr: SocketAddr,
        status: http::StatusCode,
    },
    #[error(
        "tracing provider {provider}: the OTLP gRPC collector at {addr} answered grpc-status \
         {code:?} (check that it serves TraceService on this port, and its headers' \
         credentials)"
    )]
    GrpcStatus {
        provider: String,
        addr: SocketAddr,
        /// `None`: the answer carried no `grpc-status` at all.
        code: Option<u32>,
    },
}

/// `shunt_tracing_spans_dropped_total`, `shunt_tracing_spans_exported_total`,
/// `shunt_tracing_export_failures_total`.
#[derive(Debug, Default)]
pub struct TraceMetrics {
    dropped: Counter,
    exported: Counter,
    failed: Counter,
}

impl TraceMetrics {
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "shunt_tracing_spans_dropped",
            "Spans dropped because the export queue was full (a slow or unreachable \
             collector)",
            metrics.dropped.clone(),
        );
        registry.register(
            "shunt_tracing_spans_exported",
            "Spans a tracing provider's collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "shunt_tracing_export_failures",
            "Batches of spans a collector did not accept (unreachable, timed out, or an error \
             status); their spans are lost",
            metrics.failed.clone(),
        );
        metrics
    }

    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    #[must_use]
    pub fn failed(&self) -> u64 {
        self.failed.get()
    }

    #[must_use]
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }
}

/// What the exporter needs of the mesh at each export: the providers now, and the index to
/// find their collectors in.
pub type MeshView = Arc<dyn Fn() -> (TracingSettings, Arc<MeshIndex>) + Send + Sync>;

/// The request side of the exporter.
#[derive(Clone, Debug)]
pub struct SpanQueue {
    spans: mpsc::Sender<Span>,
    metrics: Arc<TraceMetrics>,
}

impl SpanQueue {
    /// Queues `span` for export, or drops and counts it when the queue is full. Never waits.
    pub fn push(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// A queue of `capacity` spans and the exporter task that drains it (spawned on the
    /// current runtime); the task ends when the last queue handle is dropped.
    #[must_use]
    pub fn spawn(capacity: usize, mesh: MeshView, metrics: Arc<TraceMetrics>) -> Self {
        let (spans, receiver) = mpsc::channel(capacity.max(1));
        tokio::spawn(run(receiver, mesh, metrics.clone()));
        Self { spans, metrics }
    }
}

async fn run(mut spans: mpsc::Receiver<Span>, mesh: MeshView, metrics: Arc<TraceMetrics>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = spans.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let (settings, index) = mesh();
        for provider in &settings.providers {
            match export(provider, &index, &batch).await {
                Ok(()) => {
                    metrics
                        .exported
                        .inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
                }
                Err(error) => {
                    metrics.failed.inc();
                    tracing::debug!(%error, spans = batch.len(), "span export failed");
                }
            }
        }
        batch.clear();
    }
}

async fn export(
    provider: &TracingProvider,
    index: &MeshIndex,
    batch: &[Span],
) -> Result<(), Error> {
    use prost::Message as _;
    let addr = collector_addr(provider, index)?;
    let sent = async {
        match provider.protocol {
            TraceProtocol::Zipkin => {
                post(provider, addr, "application/json", zipkin_json(batch)).await
            }
            TraceProtocol::OtlpHttp => {
                let body = export_request(batch).encode_to_vec();
                post(provider, addr, "application/x-protobuf", body).await
            }
            TraceProtocol::OtlpGrpc => {
                let body = export_request(batch).encode_to_vec();
                grpc_export(provider, addr, grpc_frame(&body)).await
            }
        }
    };
    tokio::time::timeout(provider.timeout, sent)
        .await
        .map_err(|_| Error::Timeout {
            provider: provider.name.clone(),
            addr,
            timeout: provider.timeout,
        })?
}

/// The collector's address: `service` itself when it is an IP address, else a ready pod of
/// the Service it names (its FQDN, or `name.namespace`).
fn collector_addr(provider: &TracingProvider, index: &MeshIndex) -> Result<SocketAddr, Error> {
    if let Ok(ip) = provider.service.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, provider.port));
    }
    let fqdn = if provider.service.ends_with(".svc.cluster.local") {
        provider.service.clone()
    } else {
        format!("{}.svc.cluster.local", provider.service)
    };
    [provider.service.as_str(), fqdn.as_str()]
        .into_iter()
        .find_map(|host| index.service_pod_addr(host, provider.port))
        .map(SocketAddr::V4)
        .ok_or_else(|| Error::NoCollector {
            provider: provider.name.clone(),
            host: provider.service.clone(),
            port: provider.port,
        })
}

async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Marked before connect: the connect4 program decides on the connect call. Without
    // CAP_NET_ADMIN (a test run as a user) the export goes unmarked.
    if let Err(error) = socket2::SockRef::from(&socket).set_mark(shunt_common::PROXY_MARK) {
        tracing::debug!(%error, "span export socket left unmarked");
    }
    socket.connect(addr).await
}

async fn post(
    provider: &TracingProvider,
    addr: SocketAddr,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<(), Error> {
    let stream = dial(addr).await.map_err(|source| Error::Connect {
        provider: provider.name.clone(),
        addr,
        source,
    })?;
    let http_error = |source| Error::Http {
        provider: provider.name.clone(),
        addr,
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::post(provider.path.as_str())
        .header(
            http::header::HOST,
            format!("{}:{}", provider.service, provider.port),
        )
        .header(http::header::CONTENT_TYPE, content_type);
    for (name, value) in &provider.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| Error::Status {
            provider: provider.name.clone(),
            addr,
            status: http::StatusCode::BAD_REQUEST,
        })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    // Read the answer to its end so the collector sees a clean close.
    let _ = response.into_body().collect().await;
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(Error::Status {
            provider: provider.name.clone(),
            addr,
            status,
        })
    }
}

/// One OTLP `TraceService/Export` call: `frame` (the request, gRPC-framed) over HTTP/2, the
/// provider's headers as metadata; OK only on `grpc-status: 0`.
async fn grpc_export(
    provider: &TracingProvider,
    addr: SocketAddr,
    frame: Vec<u8>,
) -> Result<(), Error> {
    let stream = dial(addr).await.map_err(|source| Error::Connect {
        provider: provider.name.clone(),
        addr,
        source,
    })?;
    let http_error = |source| Error::Http {
        provider: provider.name.clone(),
        addr,
        source,
    };
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(http_error)?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::post(format!(
        "http://{}:{}{GRPC_EXPORT_PATH}",
        provider.service, provider.port
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers");
    for (name, value) in &provider.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(frame)))
        .map_err(|_| Error::Status {
            provider: provider.name.clone(),
            addr,
            status: http::StatusCode::BAD_REQUEST,
        })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    // A trailers-only answer (an error at once) has grpc-status in its headers.
    let in_headers = grpc_status(response.headers());
    let collected = response.into_body().collect().await.map_err(http_error)?;
    let code = collected.trailers().and_then(grpc_status).or(in_headers);
    driver.abort();
    if !status.is_success() {
        return Err(Error::Status {
            provider: provider.name.clone(),
            addr,
            status,
        });
    }
    match code {
        Some(0) => Ok(()),
        code => Err(Error::GrpcStatus {
            provider: provider.name.clone(),
            addr,
            code,
        }),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
