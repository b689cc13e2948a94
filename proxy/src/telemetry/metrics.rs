//! Istio's metrics with Istio's standard labels: L4 (`istio_tcp_*`), L7 (`istio_requests_total`
//! and the request duration/size histograms), and shunt's own counters.
#![forbid(unsafe_code)]

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Reporter;
use crate::response_flag::ResponseFlags;
use shunt_mesh::model::{Service, Workload};

/// What `GET /metrics` answers with: the OpenMetrics text format that `prometheus-client`
/// writes, which Prometheus asks for first in its `Accept` header.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

use super::peer::Peer;
pub use super::peer::UNKNOWN;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot encode the metrics registry as text")]
    Encode(#[from] std::fmt::Error),
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        // The codes are plain ASCII letters and commas: nothing to escape.
        write!(encoder, "{self}")
    }
}

/// Istio's standard labels of the `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    /// The client's SPIFFE identity; "unknown" until mTLS.
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// The Service's FQDN.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
}

impl TcpLabels {
    /// Labels for a connection from `source` to `destination` through `service`; whatever is
    /// not known is "unknown".
    #[must_use]
    pub fn new(
        reporter: Reporter,
        source: Option<&Workload>,
        destination: Option<&Workload>,
        service: Option<&Service>,
    ) -> Self {
        let (source, destination) = (Peer::new(source), Peer::new(destination));
        let (destination_service, destination_service_name, destination_service_namespace) =
            service.map_or_else(
                || (UNKNOWN.to_owned(), UNKNOWN.to_owned(), UNKNOWN.to_owned()),
                |s| (s.hostname(), s.name.clone(), s.namespace.clone()),
            );
        Self {
            reporter,
            source_workload: source.workload().to_owned(),
            source_workload_namespace: source.namespace().to_owned(),
            source_principal: source.principal().to_owned(),
            destination_workload: destination.workload().to_owned(),
            destination_workload_namespace: destination.namespace().to_owned(),
            destination_service,
            destination_service_name,
            destination_service_namespace,
            request_protocol: "tcp",
        }
    }
}

/// Bucket bounds of Istio's L7 histograms. Istio leaves `istio_request_duration_milliseconds`,
/// `istio_request_bytes` and `istio_response_bytes` on Envoy's default histogram buckets
/// (Envoy `envoy/stats/histogram.h` `supportedBuckets`); scrapes in istio/istio#22007 show
/// `istio_request_bytes_bucket{..., le="600000"}`, i.e. the same bounds for bytes as for
/// milliseconds.
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Istio's standard labels of the L7 metrics (`reporter="source"` on the outbound side).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_version: String,
    pub destination_subset: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status of a gRPC response; empty otherwise (as Istio reports it).
    pub grpc_response_status: String,
    /// Envoy's response flags (`UF`, `URX`, ...), encoded comma-joined; `-` for none.
    pub response_flags: ResponseFlags,
}

/// `protocol` of `shunt_registry_only_blocked_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    pub protocol: &'static str,
}

/// Handles on the `istio_request*` series of one label set (they share the registry's state).
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestMetrics {
    pub fn record(&self, request: &RequestSample) {
        self.requests.inc();
        self.duration.observe(request.duration_ms);
        #[expect(
            clippy::cast_precision_loss,
            reason = "byte counts above 2^53 lose precision in a histogram, harmlessly"
        )]
        {
            self.request_bytes.observe(request.request_bytes as f64);
            self.response_bytes.observe(request.response_bytes as f64);
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn istio_histogram() -> Histogram {
    Histogram::new(ISTIO_BUCKETS)
}

/// The proxy's metrics registry.
pub struct Metrics {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent_bytes: Family<TcpLabels, Counter>,
    received_bytes: Family<TcpLabels, Counter>,
    requests: Family<HttpLabels, Counter>,
    request_duration: HistogramFamily<HttpLabels>,
    request_bytes: HistogramFamily<HttpLabels>,
    response_bytes: HistogramFamily<HttpLabels>,
    registry_only_blocked: Family<BlockedLabels, Counter>,
    /// Pools, load balancing, outlier detection, overflows of the upstream clusters.
    pub upstream: std::sync::Arc<crate::upstream::UpstreamMetrics>,
    /// HBONE connections, streams and handshake failures.
    pub hbone: std::sync::Arc<crate::hbone::HboneMetrics>,
    /// `shunt_workload_certificate_expiry_timestamp_seconds{identity}`.
    cert_expiry: Family<IdentityLabels, Gauge>,
    /// `shunt_peer_authentication_refused_total`.
    peer_authn_refused: Counter,
}

/// One workload identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

impl Metrics {
    /// A plaintext connection was refused under `STRICT`.
    pub fn peer_authn_refused(&self) {
        self.peer_authn_refused.inc();
    }

    /// Sets the certificate-expiry gauge to exactly `expiries` (identities gone lose their
    /// series).
    pub fn set_cert_expiry(&self, expiries: &[(String, std::time::SystemTime)]) {
        self.cert_expiry.clear();
        for (identity, not_after) in expiries {
            let seconds = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.cert_expiry
                .get_or_create(&IdentityLabels {
                    identity: identity.clone(),
                })
                .set(seconds);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent_bytes = Family::<TcpLabels, Counter>::default();
        let received_bytes = Family::<TcpLabels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client (server to client)",
            sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client (client to server)",
            received_bytes.clone(),
        );
        let requests = Family::<HttpLabels, Counter>::default();
        let request_duration: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(istio_histogram);
        let request_bytes: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(istio_histogram);
        let response_bytes: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(istio_histogram);
        let registry_only_blocked = Family::<BlockedLabels, Counter>::default();
        registry.register("istio_requests", "HTTP requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "HTTP request duration in milliseconds",
            request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "HTTP request sizes (headers and body) in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "HTTP response sizes (headers and body) in bytes",
            response_bytes.clone(),
        );
        registry.register(
            "shunt_registry_only_blocked",
            "Connections (tcp) and requests (http) to destinations outside the registry refused \
             under outboundTrafficPolicy REGISTRY_ONLY",
            registry_only_blocked.clone(),
        );
        let upstream =
            std::sync::Arc::new(crate::upstream::UpstreamMetrics::register(&mut registry));
        let hbone = std::sync::Arc::new(crate::hbone::HboneMetrics::register(&mut registry));
        let cert_expiry = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "shunt_workload_certificate_expiry_timestamp_seconds",
            "When the certificate this proxy holds for each workload identity expires (Unix time); \
             an identity without a valid certificate has no series",
            cert_expiry.clone(),
        );
        let peer_authn_refused = Counter::default();
        registry.register(
            "shunt_peer_authentication_refused",
            "Plaintext inbound connections refused because PeerAuthentication is STRICT for \
             their destination port",
            peer_authn_refused.clone(),
        );
        Self {
            registry,
            opened,
            closed,
            sent_bytes,
            received_bytes,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            registry_only_blocked,
            upstream,
            hbone,
            cert_expiry,
            peer_authn_refused,
        }
    }

    /// Counts one finished HTTP request.
    pub fn record_request(&self, labels: &HttpLabels, request: &RequestSample) {
        self.request_metrics(labels).record(request);
    }

    /// The four `istio_request*` series of one label set, to record into without looking
    /// them up again.
    #[must_use]
    pub fn request_metrics(&self, labels: &HttpLabels) -> RequestMetrics {
        RequestMetrics {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.request_duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }

    pub fn registry_only_blocked(&self, protocol: &'static str) {
        self.registry_only_blocked
            .get_or_create(&BlockedLabels { protocol })
            .inc();
    }

    /// Counts a connection as opened and returns its handles; dropping them counts it closed.
    #[must_use]
    pub fn open_connection(&self, labels: &TcpLabels) -> ConnectionMetrics {
        self.opened.get_or_create(labels).inc();
        // Looked up once: byte counts then cost one atomic add per write.
        ConnectionMetrics {
            closed: self.closed.get_or_create_owned(labels),
            sent_bytes: self.sent_bytes.get_or_create_owned(labels),
            received_bytes: self.received_bytes.get_or_create_owned(labels),
        }
    }

    /// The whole registry in the text format.
    pub fn encode(&self) -> Result<String, Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What one finished HTTP request measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestSample {
    pub duration_ms: f64,
    /// Headers and body, as Istio counts them.
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// One connection's counters; the connection counts as closed when this is dropped.
#[derive(Debug)]
pub struct ConnectionMetrics {
    closed: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
}

impl ConnectionMetrics {
    /// Client → server bytes.
    pub fn received(&self, bytes: u64) {
        self.received_bytes.inc_by(bytes);
    }

    /// Server → client bytes.
    pub fn sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_flag::ResponseFlag;
    use std::collections::BTreeMap;

    fn workload(namespace: &str, name: &str) -> Workload {
        Workload {
            uid: format!("{namespace}/{name}-0").into(),
            namespace: namespace.into(),
            name: format!("{name}-0"),
            workload_name: name.into(),
            service_account: "default".into(),
            ip: None,
            labels: BTreeMap::new(),
            captured: true,
            ready: true,
            ports: vec![],
            excluded_inbound_ports: vec![],
            node: None,
        }
    }

    fn service(namespace: &str, name: &str) -> Service {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip: None,
            ports: vec![],
            selector: BTreeMap::new(),
        }
    }

    /// The sample lines of `metric` in `text`, without the value.
    fn samples(text: &str, metric: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{metric}{{")))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn counters_render_with_istio_names_and_labels() {
        let metrics = Metrics::new();
        let web = workload("shop", "web");
        let api = workload("shop", "api");
        let svc = service("shop", "api");
        let cases = [
            (
                TcpLabels::new(Reporter::Source, Some(&web), Some(&api), Some(&svc)),
                "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"web\",\
                 source_workload_namespace=\"shop\",source_principal=\"unknown\",\
                 destination_workload=\"api\",destination_workload_namespace=\"shop\",\
                 destination_service=\"api.shop.svc.cluster.local\",\
                 destination_service_name=\"api\",destination_service_namespace=\"shop\",\
                 request_protocol=\"tcp\"}",
            ),
            (
                TcpLabels::new(Reporter::Destination, None, Some(&api), None),
                "istio_tcp_connections_opened_total{reporter=\"destination\",\
                 source_workload=\"unknown\",source_workload_namespace=\"unknown\",\
                 source_principal=\"unknown\",destination_workload=\"api\",\
                 destination_workload_namespace=\"shop\",destination_service=\"unknown\",\
                 destination_service_name=\"unknown\",destination_service_namespace=\"unknown\",\
                 request_protocol=\"tcp\"}",
            ),
        ];
        for (labels, _) in &cases {
            let connection = metrics.open_connection(labels);
            connection.received(100);
            connection.sent(7);
        }
        let text = metrics.encode().unwrap();
        let opened = samples(&text, "istio_tcp_connections_opened_total");
        for (_, series) in &cases {
            assert!(
                opened.contains(&((*series).to_owned(), "1".to_owned())),
                "{series} missing from\n{text}"
            );
        }
        // Handles were dropped at the end of each loop iteration: every connection is closed.
        for (metric, value) in [
            ("istio_tcp_connections_closed_total", "1"),
            ("istio_tcp_received_bytes_total", "100"),
            ("istio_tcp_sent_bytes_total", "7"),
        ] {
            let found = samples(&text, metric);
            assert_eq!(found.len(), 2, "{metric} in\n{text}");
            assert!(found.iter().all(|(_, v)| v == value), "{metric} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_connection_counts_as_closed_only_when_its_handle_drops() {
        let metrics = Metrics::new();
        let labels = TcpLabels::new(Reporter::Source, None, None, None);
        let connection = metrics.open_connection(&labels);
        let closed = |m: &Metrics| {
            samples(&m.encode().unwrap(), "istio_tcp_connections_closed_total")
                .first()
                .map(|(_, v)| v.clone())
        };
        assert_eq!(closed(&metrics).as_deref(), Some("0"));
        drop(connection);
        assert_eq!(closed(&metrics).as_deref(), Some("1"));
    }

    #[test]
    fn requests_render_with_istio_labels_and_buckets() {
        let metrics = Metrics::new();
        let labels = HttpLabels {
            reporter: Reporter::Source,
            source_workload: "web".into(),
            source_workload_namespace: "shop".into(),
            source_principal: UNKNOWN.into(),
            destination_workload: "api".into(),
            destination_workload_namespace: "shop".into(),
            destination_service: "api.shop.svc.cluster.local".into(),
            destination_service_name: "api".into(),
            destination_service_namespace: "shop".into(),
            destination_version: "v2".into(),
            destination_subset: "v2".into(),
            request_protocol: "grpc",
            response_code: 200,
            grpc_response_status: "14".into(),
            response_flags: ResponseFlag::UpstreamRetryLimitExceeded.into(),
        };
        for duration_ms in [3.0, 40.0] {
            metrics.record_request(
                &labels,
                &RequestSample {
                    duration_ms,
                    request_bytes: 120,
                    response_bytes: 9,
                },
            );
        }
        metrics.registry_only_blocked("http");
        let text = metrics.encode().unwrap();
        let requests = samples(&text, "istio_requests_total");
        assert_eq!(requests.len(), 1, "{text}");
        for label in [
            "response_code=\"200\"",
            "grpc_response_status=\"14\"",
            "request_protocol=\"grpc\"",
            "response_flags=\"URX\"",
            "destination_version=\"v2\"",
            "destination_subset=\"v2\"",
        ] {
            assert!(
                requests[0].0.contains(label),
                "{label} in {}",
                requests[0].0
            );
        }
        assert_eq!(requests[0].1, "2");
        let bucket = |metric: &str, le: &str| {
            samples(&text, metric)
                .into_iter()
                .find(|(series, _)| series.contains(&format!("le=\"{le}\"")))
                .map(|(_, v)| v)
        };
        // Istio's bounds: 3 ms and 40 ms fall into le=5 and le=50.
        let duration = "istio_request_duration_milliseconds_bucket";
        assert_eq!(bucket(duration, "1.0").as_deref(), Some("0"));
        assert_eq!(bucket(duration, "5.0").as_deref(), Some("1"));
        assert_eq!(bucket(duration, "50.0").as_deref(), Some("2"));
        assert_eq!(bucket(duration, "3600000.0").as_deref(), Some("2"));
        assert_eq!(
            bucket("istio_request_bytes_bucket", "100.0").as_deref(),
            Some("0")
        );
        assert_eq!(
            bucket("istio_request_bytes_bucket", "250.0").as_deref(),
            Some("2")
        );
        assert_eq!(
            bucket("istio_response_bytes_bucket", "10.0").as_deref(),
            Some("2")
        );
        assert_eq!(
            samples(&text, "shunt_registry_only_blocked_total"),
            [(
                "shunt_registry_only_blocked_total{protocol=\"http\"}".to_owned(),
                "1".to_owned()
            )]
        );
    }
}
