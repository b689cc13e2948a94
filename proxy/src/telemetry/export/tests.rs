use std::time::{Duration, UNIX_EPOCH};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use serde_json::Value;
use tokio::net::TcpListener;

use super::*;
use crate::telemetry::trace::{SpanContext, SpanKind};

fn span(id: u64) -> Span {
    Span {
        context: SpanContext {
            trace_id: 7,
            span_id: id,
            parent_id: None,
            sampled: true,
            tracestate: None,
            b3_single: false,
        },
        kind: SpanKind::Client,
        name: "catalog.shop.svc.cluster.local:8080/*".into(),
        service_name: "web.shop".into(),
        local_ip: None,
        remote: None,
        start: UNIX_EPOCH,
        duration: Duration::from_millis(1),
        tags: vec![("component", "proxy".into())],
    }
}

fn zipkin(addr: SocketAddr) -> TracingProvider {
    TracingProvider {
        name: "zipkin".into(),
        protocol: TraceProtocol::Zipkin,
        service: addr.ip().to_string(),
        port: addr.port(),
        path: "/api/v2/spans".into(),
        headers: vec![("x-tenant".into(), "a".into())],
        timeout: Duration::from_secs(5),
        max_tag_length: 256,
    }
}

fn view(providers: Vec<TracingProvider>) -> MeshView {
    let index = Arc::new(MeshIndex::default());
    Arc::new(move || {
        (
            TracingSettings {
                providers: providers.clone(),
                ..TracingSettings::default()
            },
            index.clone(),
        )
    })
}

/// A Zipkin receiver on loopback: each request's path, tenant header and JSON body.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<(String, String, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let tenant = request.headers()["x-tenant"].to_str().unwrap().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let _ = seen.send((path, tenant, serde_json::from_slice(&body).unwrap()));
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn spans_reach_a_zipkin_collector_as_v2_json_in_batches() {
    let (addr, mut received) = receiver().await;
    let metrics = Arc::new(TraceMetrics::default());
    let queue = SpanQueue::spawn(16, view(vec![zipkin(addr)]), metrics.clone());
    for id in 1..=3 {
        queue.push(span(id));
    }
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let (path, tenant, body) = received.recv().await.unwrap();
        assert_eq!((path.as_str(), tenant.as_str()), ("/api/v2/spans", "a"));
        for span in body.as_array().unwrap() {
            assert_eq!(span["traceId"], "00000000000000000000000000000007");
            assert_eq!(span["localEndpoint"]["serviceName"], "web.shop");
            ids.push(span["id"].as_str().unwrap().to_owned());
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        ["0000000000000001", "0000000000000002", "0000000000000003"]
    );
    // The counter moves after the collector's answer; bounded wait, no timing asserted.
    for _ in 0..500 {
        if metrics.exported() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (metrics.exported(), metrics.failed(), metrics.dropped()),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn a_dead_collector_counts_failures_and_never_holds_a_push() {
    // A port nothing listens on: bound, then closed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let metrics = Arc::new(TraceMetrics::default());
    let queue = SpanQueue::spawn(16, view(vec![zipkin(addr)]), metrics.clone());
    queue.push(span(1));
    for _ in 0..500 {
        if metrics.failed() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((metrics.failed(), metrics.exported()), (1, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts() {
    let metrics = Arc::new(TraceMetrics::default());
    // On this one thread the exporter cannot run before the pushes end: exactly the
    // capacity is kept.
    let queue = SpanQueue::spawn(2, view(vec![]), metrics.clone());
    for id in 1..=100 {
        queue.push(span(id));
    }
    assert_eq!(metrics.dropped(), 98);
}

#[test]
fn a_collector_outside_the_mesh_is_named_in_the_error() {
    let provider = TracingProvider {
        service: "zipkin.istio-system".into(),
        ..zipkin("127.0.0.1:9411".parse().unwrap())
    };
    let error = collector_addr(&provider, &MeshIndex::default()).unwrap_err();
    assert!(
        error.to_string().contains("zipkin.istio-system:9411"),
        "{error}"
    );
    let literal = collector_addr(
        &zipkin("10.0.0.9:9411".parse().unwrap()),
        &MeshIndex::default(),
    );
    assert_eq!(literal.unwrap(), "10.0.0.9:9411".parse().unwrap());
}

/// An OTLP collector on loopback, HTTP/protobuf (HTTP/1.1) or gRPC (h2c): each request's
/// path, content type and decoded spans' ids; gRPC answers OK in its trailers.
async fn otlp_receiver(
    grpc: bool,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, String, Vec<u64>)>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request.headers()[http::header::CONTENT_TYPE]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        // gRPC: a 5-byte frame header before the message.
                        let message = if grpc { &body[5..] } else { &body[..] };
                        let decoded = ExportTraceServiceRequest::decode(message).unwrap();
                        let ids = decoded
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .flat_map(|s| &s.spans)
                            .map(|s| u64::from_be_bytes(s.span_id.as_slice().try_into().unwrap()))
                            .collect();
                        let _ = seen.send((path, content_type, ids));
                        let response = if grpc {
                            http::Response::builder()
                                .header(http::header::CONTENT_TYPE, "application/grpc")
                                .body(GrpcOk::new().boxed())
                                .unwrap()
                        } else {
                            http::Response::new(Full::new(Bytes::new()).boxed())
                        };
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let io = TokioIo::new(stream);
                if grpc {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (addr, received)
}

/// A gRPC unary answer's body: an empty message frame, then `grpc-status: 0`.
struct GrpcOk(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl GrpcOk {
    fn new() -> Self {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Self(
            [
                hyper::body::Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])),
                hyper::body::Frame::trailers(trailers),
            ]
            .into(),
        )
    }
}

impl hyper::body::Body for GrpcOk {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn spans_reach_otlp_collectors_over_http_and_grpc() {
    // (protocol, the path the collector sees, its content type)
    let cases = [
        (
            TraceProtocol::OtlpHttp,
            "/v1/traces",
            "application/x-protobuf",
        ),
        (
            TraceProtocol::OtlpGrpc,
            GRPC_EXPORT_PATH,
            "application/grpc",
        ),
    ];
    for (protocol, want_path, want_type) in cases {
        let grpc = protocol == TraceProtocol::OtlpGrpc;
        let (addr, mut received) = otlp_receiver(grpc).await;
        let provider = TracingProvider {
            name: "otel".into(),
            protocol,
            path: if grpc {
                String::new()
            } else {
                "/v1/traces".into()
            },
            ..zipkin(addr)
        };
        let metrics = Arc::new(TraceMetrics::default());
        let queue = SpanQueue::spawn(16, view(vec![provider]), metrics.clone());
        for id in 1..=3 {
            queue.push(span(id));
        }
        let mut ids = Vec::new();
        while ids.len() < 3 {
            let (path, content_type, batch) = received.recv().await.unwrap();
            assert_eq!(
                (path.as_str(), content_type.as_str()),
                (want_path, want_type)
            );
            ids.extend(batch);
        }
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3], "{protocol:?}");
        for _ in 0..500 {
            if metrics.exported() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            (metrics.exported(), metrics.failed(), metrics.dropped()),
            (3, 0, 0),
            "{protocol:?}"
        );
    }
}
