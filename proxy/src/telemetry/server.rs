//! The metrics endpoint: Prometheus text (or OpenMetrics, if `Accept` prefers it) on `GET /metrics` and `GET /stats/prometheus` (the
//! path Istio's sidecars serve, so existing scrape configs keep working), and the upstream
//! clusters' runtime state as JSON on `GET /debug/clusters` (pools, ejections; for `shuntctl`),
//! and the flow ring as NDJSON on `GET /flows?last=N&follow=1` (for `shuntctl flows`).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::exposition::Format;
use super::flows::Query;
use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot listen for metrics on {addr} (is another shunt-proxy or an Istio sidecar \
         already using it? pick another with --metrics-addr): {source}"
    )]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Binds the metrics listener; done before anything else starts so a taken port fails fast.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// What `GET /debug/clusters` shows (per pod, its upstream clusters) and `GET /debug/certs`
/// (the workload certificates), and what is refreshed before a scrape.
pub trait ClustersSource: Send + Sync {
    fn clusters(&self) -> serde_json::Value;
    /// The certificates, as `shuntctl certs` reads them; none by default.
    fn certs(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
    /// Gauges computed at scrape time (certificate expiry).
    fn before_scrape(&self) {}
}

/// Serves scrapes until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    clusters: Arc<dyn ClustersSource>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let clusters = clusters.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (metrics, clusters) = (metrics.clone(), clusters.clone());
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &*clusters, &request, shutdown)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

fn respond(
    metrics: &Metrics,
    clusters: &dyn ClustersSource,
    request: &Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<BoxBody<Bytes, Infallible>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    if !matches!(
        path,
        "/metrics" | "/stats/prometheus" | "/debug/clusters" | "/debug/certs" | "/flows"
    ) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint {path}; metrics are at /metrics and /stats/prometheus, \
                 upstream clusters at /debug/clusters, certificates at /debug/certs, flows \
                 at /flows\n"
            ),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "metrics and clusters are read with GET\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/flows" {
        return match Query::parse(request.uri().query()) {
            Ok(query) => {
                let mut response = Response::new(metrics.flows.stream(query, shutdown).boxed());
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/x-ndjson"),
                );
                response
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        };
    }
    if path == "/debug/clusters" || path == "/debug/certs" {
        let body = if path == "/debug/certs" {
            clusters.certs()
        } else {
            clusters.clusters()
        };
        let mut response = text(StatusCode::OK, body.to_string());
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return response;
    }
    clusters.before_scrape();
    let format = Format::negotiate(
        request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    match metrics.encode_as(format) {
        Ok(body) => {
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Reporter;
    use crate::telemetry::security::PeerSecurity;
    use crate::testing::http_request as get;

    struct NoPods;

    impl ClustersSource for NoPods {
        fn clusters(&self) -> serde_json::Value {
            serde_json::json!({"shop/web-1": {}})
        }
    }

    #[tokio::test]
    async fn both_paths_serve_the_registry_and_others_are_refused() {
        let metrics = Arc::new(Metrics::new());
        let _open = metrics.open_connection(metrics.tcp_labels(
            Reporter::Source,
            None,
            None,
            None,
            PeerSecurity::None,
        ));
        metrics.flows.push(crate::telemetry::flows::tcp_open(
            &crate::telemetry::flows::Ends {
                reporter: Reporter::Source,
                pod: "shop/web-1",
                src_pod: None,
                dst_pod: None,
                src_addr: "10.0.0.1:4000",
                dst_addr: "10.0.0.2:80",
                src_workload: "web",
                src_namespace: "shop",
                dst_workload: "cart",
                dst_namespace: "shop",
                dst_service: "cart.shop.svc.cluster.local",
            },
        ));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics, Arc::new(NoPods), shutdown.clone()));

        let openmetrics = Format::OpenMetrics.content_type();
        let classic = Format::Classic.content_type();
        for (request, status, body_has, content_type) in [
            (
                "GET /metrics HTTP/1.1",
                "200 OK",
                "# TYPE istio_tcp_connections_opened_total counter",
                Some(classic),
            ),
            (
                "GET /stats/prometheus HTTP/1.1",
                "200 OK",
                "istio_tcp_connections_opened_total{",
                Some(classic),
            ),
            (
                "GET /stats/prometheus HTTP/1.1\r\nAccept: application/openmetrics-text;\
                 version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
                "200 OK",
                "# EOF",
                Some(openmetrics),
            ),
            (
                "GET /metrics HTTP/1.1\r\nAccept: text/plain;version=0.0.4",
                "200 OK",
                "process_open_fds ",
                Some(classic),
            ),
            (
                "GET /other HTTP/1.1",
                "404 Not Found",
                "/stats/prometheus",
                None,
            ),
            (
                "POST /metrics HTTP/1.1",
                "405 Method Not Allowed",
                "GET",
                None,
            ),
            (
                "GET /debug/clusters HTTP/1.1",
                "200 OK",
                "{\"shop/web-1\":{}}",
                Some("application/json"),
            ),
            (
                "GET /flows?last=1 HTTP/1.1",
                "200 OK",
                "\"type\":\"tcp_open\",\"verdict\":\"FORWARDED\"",
                Some("application/x-ndjson"),
            ),
            (
                "GET /flows?last=many HTTP/1.1",
                "400 Bad Request",
                "last=\"many\"",
                None,
            ),
        ] {
            let response = get(addr, request).await;
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}")),
                "{request}: {response}"
            );
            assert!(response.contains(body_has), "{request}: {response}");
            if let Some(content_type) = content_type {
                assert!(
                    response.contains(&format!("content-type: {content_type}\r\n")),
                    "{request}: {response}"
                );
            }
            if content_type == Some(classic) {
                assert!(!response.contains("# EOF"), "{request}: {response}");
            }
        }
        shutdown.cancel();
        server.await.unwrap();
        // A connect to a closed loopback port can still succeed by connecting to itself (the
        // kernel may pick the port as the ephemeral source): that is no listener.
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            assert_eq!(
                stream.local_addr().ok(),
                stream.peer_addr().ok(),
                "listener still open"
            );
        }
    }

    /// A scrape of a registry with every kind of series, checked by `promtool check metrics`
    /// (Prometheus's own linter): nothing but Istio's own non-base unit may be reported.
    #[tokio::test]
    async fn promtool_accepts_a_scrape() {
        if std::process::Command::new("promtool")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIPPED: promtool is not installed (Debian `prometheus`; cargo xtask setup)");
            return;
        }
        let metrics = Arc::new(Metrics::new());
        let connection = metrics.open_connection(metrics.tcp_labels(
            Reporter::Destination,
            None,
            None,
            None,
            PeerSecurity::None,
        ));
        connection.received(10);
        connection.close(crate::response_flag::ResponseFlags::NONE);
        metrics.record_request(
            &crate::telemetry::metrics::HttpLabels {
                reporter: Reporter::Source,
                source: None,
                destination: None,
                service: crate::telemetry::metrics::DestinationService::Unknown,
                destination_version: None,
                destination_subset: None,
                security: PeerSecurity::None,
                request_protocol: "http",
                response_code: 200,
                grpc_response_status: None,
                response_flags: crate::response_flag::ResponseFlags::NONE,
            },
            &crate::telemetry::metrics::RequestSample {
                duration_ms: 2.0,
                request_bytes: 10,
                response_bytes: 20,
            },
        );
        metrics.registry_only_blocked("tcp");
        metrics.connection_refused("inbound");
        metrics.limit_hit("request_headers_size");
        let _load = metrics.listeners.track("inbound", Some(8)).take();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            metrics.clone(),
            Arc::new(NoPods),
            shutdown.clone(),
        ));
        // promtool reads the classic text only (an OpenMetrics counter's TYPE names it
        // without `_total`, so promtool would find its samples without HELP).
        for accept in ["*/*", "text/plain;version=0.0.4"] {
            let response = get(addr, &format!("GET /metrics HTTP/1.1\r\nAccept: {accept}")).await;
            let (_, body) = response.split_once("\r\n\r\n").unwrap();
            let problems = promtool_check(body);
            assert_eq!(
                problems,
                [
                    "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\""
                ],
                "{accept}:\n{body}"
            );
        }
        shutdown.cancel();
        server.await.unwrap();
    }

    /// What `promtool check metrics` reports about `body`, one problem a line.
    fn promtool_check(body: &str) -> Vec<String> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let mut problems: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        problems.sort();
        problems.dedup();
        problems
    }

    #[tokio::test]
    async fn a_taken_address_names_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("--metrics-addr"), "{err}");
    }
}
