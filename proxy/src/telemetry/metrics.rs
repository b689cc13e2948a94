//! Istio's metrics with Istio's standard labels: L4 (`istio_tcp_*`), L7 (`istio_requests_total`
//! and the request duration/size histograms), and shunt's own counters.
#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Reporter;
use super::peer::{DEFAULT_CLUSTER_ID, Known, PeerCatalog, PeerLabels, TRUST_DOMAIN};
use super::security::{PeerSecurity, SecurityPolicy, principal_label};
use crate::response_flag::ResponseFlags;
use shunt_mesh::model::{Service, Workload};

/// The content type of [`Metrics::encode`]: the OpenMetrics text format that
/// `prometheus-client` writes ([`Metrics::encode_as`] serves the classic text too).
pub const CONTENT_TYPE: &str = super::exposition::Format::OpenMetrics.content_type();

pub use super::UNKNOWN;

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
        // The codes are plain ASCII letters and commas: nothing to escape.
        write!(encoder, "{self}")
    }
}

/// `destination_service`, `destination_service_name` and `destination_service_namespace`.
/// Holds what the route table already shares, so naming a connection's Service allocates
/// nothing; the FQDN is written when the series is scraped.
#[derive(Clone, Debug, Default)]
pub enum DestinationService {
    /// Nothing known: `unknown` in all three.
    #[default]
    Unknown,
    /// A Kubernetes Service: `name.namespace.svc.cluster.local`, its name and namespace.
    Service(Arc<Service>),
    /// A ServiceEntry host: Istio names it in `destination_service` and
    /// `destination_service_name`, and leaves the namespace `unknown`.
    Host(Arc<str>),
}

impl DestinationService {
    /// `service`, or `unknown`.
    #[must_use]
    pub fn of(service: Option<&Arc<Service>>) -> Self {
        service.map_or(Self::Unknown, |s| Self::Service(s.clone()))
    }
}

impl PartialEq for DestinationService {
    /// A Service by its name and namespace, which are all its labels say.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Unknown, Self::Unknown) => true,
            (Self::Service(a), Self::Service(b)) => {
                Arc::ptr_eq(a, b) || (a.name == b.name && a.namespace == b.namespace)
            }
            (Self::Host(a), Self::Host(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for DestinationService {}

impl std::hash::Hash for DestinationService {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Self::Unknown => {}
            Self::Service(s) => (&s.name, &s.namespace).hash(state),
            Self::Host(host) => host.hash(state),
        }
    }
}

/// A Service's FQDN as a label value, written piece by piece.
struct ServiceHost<'a>(&'a Service);

impl EncodeLabelValue for ServiceHost<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0.name)?;
        encoder.write_char('.')?;
        encoder.write_str(&self.0.namespace)?;
        encoder.write_str(".svc.cluster.local")
    }
}

fn label(
    encoder: &mut LabelSetEncoder<'_>,
    key: &'static str,
    value: impl EncodeLabelValue,
) -> fmt::Result {
    (key, value).encode(encoder.encode_label())
}

/// What the TCP and HTTP label sets share: who talks to whom, through which Service, how
/// authenticated. Encoded in the order Istio's sidecars write the labels.
struct Common<'a> {
    reporter: Reporter,
    source: Known<'a>,
    destination: Known<'a>,
    service: &'a DestinationService,
    security: &'a PeerSecurity,
}

impl Common<'_> {
    fn encode_source(&self, e: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let source = self.source;
        label(e, "reporter", self.reporter)?;
        label(e, "source_workload", source.workload())?;
        label(e, "source_canonical_service", source.canonical_service())?;
        label(e, "source_canonical_revision", source.canonical_revision())?;
        label(e, "source_workload_namespace", source.namespace())?;
        label(
            e,
            "source_principal",
            principal_label(self.security.source_principal()),
        )?;
        label(e, "source_app", source.app())?;
        label(e, "source_version", source.version())?;
        label(e, "source_cluster", source.cluster())
    }

    /// `version`: `destination_version`; `subset`: shunt's `destination_subset`, on the HTTP
    /// metrics only.
    fn encode_destination(
        &self,
        e: &mut LabelSetEncoder<'_>,
        version: &str,
        subset: Option<&str>,
    ) -> fmt::Result {
        let destination = self.destination;
        label(e, "destination_workload", destination.workload())?;
        label(e, "destination_workload_namespace", destination.namespace())?;
        label(
            e,
            "destination_principal",
            principal_label(self.security.destination_principal()),
        )?;
        label(e, "destination_app", destination.app())?;
        label(e, "destination_version", version)?;
        if let Some(subset) = subset {
            label(e, "destination_subset", subset)?;
        }
        match self.service {
            DestinationService::Unknown => label(e, "destination_service", UNKNOWN)?,
            DestinationService::Service(s) => label(e, "destination_service", ServiceHost(s))?,
            DestinationService::Host(host) => label(e, "destination_service", &**host)?,
        }
        label(
            e,
            "destination_canonical_service",
            destination.canonical_service(),
        )?;
        label(
            e,
            "destination_canonical_revision",
            destination.canonical_revision(),
        )?;
        let (name, namespace) = match self.service {
            DestinationService::Unknown => (UNKNOWN, UNKNOWN),
            DestinationService::Service(s) => (s.name.as_str(), s.namespace.as_str()),
            DestinationService::Host(host) => (&**host, UNKNOWN),
        };
        label(e, "destination_service_name", name)?;
        label(e, "destination_service_namespace", namespace)?;
        label(e, "destination_cluster", destination.cluster())
    }

    fn encode_security(&self, e: &mut LabelSetEncoder<'_>) -> fmt::Result {
        label(
            e,
            "connection_security_policy",
            SecurityPolicy::of(self.security, self.reporter).as_str(),
        )
    }
}

/// Istio's standard labels of the `istio_tcp_*` metrics. Whatever is not known is
/// `unknown`; both peers' labels are shared with every other series naming them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source: Option<Arc<PeerLabels>>,
    pub destination: Option<Arc<PeerLabels>>,
    pub service: DestinationService,
    /// Principals and `connection_security_policy`.
    pub security: PeerSecurity,
    /// `-` on the opened and byte counters; the connection's flags on the closed one.
    pub response_flags: ResponseFlags,
}

impl TcpLabels {
    fn common(&self) -> Common<'_> {
        Common {
            reporter: self.reporter,
            source: PeerLabels::or_unknown(self.source.as_deref()),
            destination: PeerLabels::or_unknown(self.destination.as_deref()),
            service: &self.service,
            security: &self.security,
        }
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let common = self.common();
        common.encode_source(encoder)?;
        // Istio's TCP series name the destination workload's own version.
        common.encode_destination(encoder, common.destination.version(), None)?;
        label(encoder, "request_protocol", "tcp")?;
        label(encoder, "response_flags", self.response_flags)?;
        common.encode_security(encoder)
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
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HttpLabels {
    pub reporter: Reporter,
    pub source: Option<Arc<PeerLabels>>,
    pub destination: Option<Arc<PeerLabels>>,
    pub service: DestinationService,
    /// `destination_version`: the cluster's (a subset's `version` label, else its
    /// endpoints'); `None`: the destination workload's `version` label, else `unknown`.
    pub destination_version: Option<Arc<str>>,
    /// `destination_subset`, shunt's own label: the subset routed to; `None`: `unknown`.
    pub destination_subset: Option<Arc<str>>,
    /// Principals and `connection_security_policy`, of the connection the request took.
    pub security: PeerSecurity,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status of a gRPC response; empty otherwise (as Istio reports it).
    pub grpc_response_status: Option<u32>,
    /// Envoy's response flags (`UF`, `URX`, ...), encoded comma-joined; `-` for none.
    pub response_flags: ResponseFlags,
}

impl EncodeLabelSet for HttpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        let common = Common {
            reporter: self.reporter,
            source: PeerLabels::or_unknown(self.source.as_deref()),
            destination: PeerLabels::or_unknown(self.destination.as_deref()),
            service: &self.service,
            security: &self.security,
        };
        common.encode_source(encoder)?;
        let version = self
            .destination_version
            .as_deref()
            .unwrap_or_else(|| common.destination.version());
        let subset = self.destination_subset.as_deref().unwrap_or(UNKNOWN);
        common.encode_destination(encoder, version, Some(subset))?;
        label(encoder, "request_protocol", self.request_protocol)?;
        label(encoder, "response_code", self.response_code)?;
        label(encoder, "grpc_response_status", self.grpc_response_status)?;
        label(encoder, "response_flags", self.response_flags)?;
        common.encode_security(encoder)
    }
}

/// `istio_build`'s labels: which component, which version.
type BuildLabels = [(&'static str, &'static str); 2];

/// `protocol` of `shunt_registry_only_blocked_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    pub protocol: &'static str,
}

/// `limit` of `shunt_http_limit_rejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// `listener` of `shunt_listener_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
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
    /// Every workload's half of the labels, built once per workload.
    pub peers: PeerCatalog,
    /// Pools, load balancing, outlier detection, overflows of the upstream clusters.
    pub upstream: std::sync::Arc<crate::upstream::UpstreamMetrics>,
    /// HBONE connections, streams and handshake failures.
    pub hbone: std::sync::Arc<crate::hbone::HboneMetrics>,
    /// Gateway servers' refused handshakes and unusable credentials.
    pub gateway: std::sync::Arc<crate::gateway::GatewayMetrics>,
    /// Kernel TCP telemetry: `shunt_tcp_rtt_seconds`, `shunt_tcp_retransmits_total`,
    /// `shunt_tcp_lost_packets_total`, and the watched sockets.
    pub tcp: std::sync::Arc<super::tcp::TcpWatches>,
    /// `shunt_workload_certificate_expiry_timestamp_seconds{identity}`.
    cert_expiry: Family<IdentityLabels, Gauge>,
    /// `shunt_peer_authentication_refused_total`.
    peer_authn_refused: Counter,
    /// `shunt_authorization_decisions_total{action, policy, decision}`.
    pub authz: std::sync::Arc<crate::authz::AuthzMetrics>,
    /// `shunt_http_limit_rejections_total{limit}`.
    limit_rejections: Family<LimitLabels, Counter>,
    /// `shunt_listener_connections_refused_total{listener}`.
    connections_refused: Family<ListenerLabels, Counter>,
    /// Span export: dropped, exported, failed ([`super::export`]).
    pub trace: std::sync::Arc<super::export::TraceMetrics>,
    /// Every listener's connections, reported against their limit at scrape time.
    pub listeners: Arc<super::saturation::Listeners>,
    /// The last connection and request events, for `GET /flows` (`shuntctl flows`).
    pub flows: Arc<super::flows::FlowRing>,
}

/// One workload identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

impl Metrics {
    /// An HTTP client hit `limit` (`request_headers_size`, `request_headers_timeout`, ...).
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_rejections
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// `listener` was at `--max-connections-per-listener` and closed a new connection.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

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
    /// The registry of a proxy in Istio's default cluster ([`DEFAULT_CLUSTER_ID`]).
    #[must_use]
    pub fn new() -> Self {
        Self::with_cluster_id(DEFAULT_CLUSTER_ID)
    }

    /// The registry of a proxy whose workloads are in `cluster_id` (`--cluster-id`): the
    /// `source_cluster` and `destination_cluster` of every known peer.
    #[must_use]
    pub fn with_cluster_id(cluster_id: &str) -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&[("component", "proxy"), ("tag", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("istio_build", "Istio component build info", build);
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
        let gateway = std::sync::Arc::new(crate::gateway::GatewayMetrics::register(&mut registry));
        let authz = std::sync::Arc::new(crate::authz::AuthzMetrics::register(&mut registry));
        let trace = std::sync::Arc::new(super::export::TraceMetrics::register(&mut registry));
        let tcp = std::sync::Arc::new(super::tcp::TcpWatches::register(&mut registry));
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
        let limit_rejections = Family::<LimitLabels, Counter>::default();
        registry.register(
            "shunt_http_limit_rejections",
            "HTTP requests and connections ended because the client went past a limit of \
             the HTTP listeners (header size or count, request line, timeouts, smuggling, \
             header hygiene, HTTP/2 rapid resets)",
            limit_rejections.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "shunt_listener_connections_refused",
            "Connections closed at accept because their listener held \
             --max-connections-per-listener already",
            connections_refused.clone(),
        );
        let listeners = Arc::new(super::saturation::Listeners::default());
        registry.register_collector(Box::new(super::saturation::Saturation::new(
            listeners.clone(),
        )));
        Self {
            registry,
            listeners,
            limit_rejections,
            connections_refused,
            opened,
            closed,
            sent_bytes,
            received_bytes,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            registry_only_blocked,
            peers: PeerCatalog::new(cluster_id, TRUST_DOMAIN),
            upstream,
            hbone,
            gateway,
            tcp,
            cert_expiry,
            peer_authn_refused,
            authz,
            trace,
            flows: Arc::default(),
        }
    }

    /// The labels of a connection between these peers, through `service`; its peers'
    /// halves come from [`Metrics::peers`].
    #[must_use]
    pub fn tcp_labels(
        &self,
        reporter: Reporter,
        source: Option<&Arc<Workload>>,
        destination: Option<&Arc<Workload>>,
        service: Option<&Arc<Service>>,
        security: PeerSecurity,
    ) -> TcpLabels {
        TcpLabels {
            reporter,
            source: self.peers.get(source),
            destination: self.peers.get(destination),
            service: DestinationService::of(service),
            security,
            response_flags: ResponseFlags::NONE,
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

    /// Counts a connection as opened and returns its handles; [`ConnectionMetrics::close`]
    /// (or dropping them) counts it closed. The opened and byte series carry no response
    /// flags (`-`): only the end of a connection knows them.
    #[must_use]
    pub fn open_connection(&self, mut labels: TcpLabels) -> ConnectionMetrics {
        labels.response_flags = ResponseFlags::NONE;
        self.opened.get_or_create(&labels).inc();
        // Looked up once: byte counts then cost one atomic add per write. The clean close's
        // series exists from the start, so its first increment is seen by `rate()`.
        ConnectionMetrics {
            closed_clean: self.closed.get_or_create_owned(&labels),
            sent_bytes: self.sent_bytes.get_or_create_owned(&labels),
            received_bytes: self.received_bytes.get_or_create_owned(&labels),
            closed: self.closed.clone(),
            labels,
        }
    }

    /// The whole registry in the text format.
    pub fn encode(&self) -> Result<String, Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The whole registry in `format`.
    pub fn encode_as(&self, format: super::exposition::Format) -> Result<String, Error> {
        let text = self.encode()?;
        Ok(match format {
            super::exposition::Format::OpenMetrics => text,
            super::exposition::Format::Classic => super::exposition::classic(&text),
        })
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

/// One connection's counters; the connection counts as closed when this is closed or
/// dropped.
#[derive(Debug)]
pub struct ConnectionMetrics {
    /// `istio_tcp_connections_closed_total` with flags `-`.
    closed_clean: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
    /// For a close with flags, whose series is looked up then.
    closed: Family<TcpLabels, Counter>,
    labels: TcpLabels,
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

    /// Counts the connection closed, with the flags it ended with (`UF`, `UO`, `UH`; none
    /// for a clean end).
    pub fn close(mut self, flags: ResponseFlags) {
        // Dropping counts it.
        self.labels.response_flags = flags;
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        if self.labels.response_flags.is_empty() {
            self.closed_clean.inc();
        } else {
            self.closed.get_or_create(&self.labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_flag::ResponseFlag;
    use crate::telemetry::security::Principal;
    use std::collections::BTreeMap;

    fn workload(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("{namespace}/{name}-0").into(),
            namespace: namespace.into(),
            name: format!("{name}-0"),
            workload_name: name.into(),
            service_account: format!("{name}-sa"),
            ip: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            captured: true,
            ready: true,
            ports: vec![],
            excluded_inbound_ports: vec![],
            node: None,
            num_trusted_proxies: None,
        })
    }

    fn service(namespace: &str, name: &str) -> Arc<Service> {
        Arc::new(Service {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip: None,
            ports: vec![],
            selector: BTreeMap::new(),
        })
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

    /// `metric{labels}` with the labels joined in order.
    fn series(metric: &str, labels: &[(&str, &str)]) -> String {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{metric}{{{}}}", labels.join(","))
    }

    const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web-sa";
    const API_ID: &str = "spiffe://cluster.local/ns/shop/sa/api-sa";

    /// The source half of the labels of `web` (app `web`, version `v1`, no canonical labels)
    /// in cluster `east`, with `principal`.
    fn web_source(principal: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("source_workload", "web"),
            ("source_canonical_service", "web"),
            ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "shop"),
            ("source_principal", principal),
            ("source_app", "web"),
            ("source_version", "v1"),
            ("source_cluster", "east"),
        ]
    }

    fn unknown_source() -> Vec<(&'static str, &'static str)> {
        [
            "source_workload",
            "source_canonical_service",
            "source_canonical_revision",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
            "source_cluster",
        ]
        .map(|k| (k, UNKNOWN))
        .to_vec()
    }

    /// The destination half for `api` (canonical name `catalog`, revision `2024-06`, no
    /// `version` label) behind Service `shop/api`, with `principal`.
    fn api_destination(principal: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("destination_workload", "api"),
            ("destination_workload_namespace", "shop"),
            ("destination_principal", principal),
            ("destination_app", "api"),
            ("destination_version", UNKNOWN),
            ("destination_service", "api.shop.svc.cluster.local"),
            ("destination_canonical_service", "catalog"),
            ("destination_canonical_revision", "2024-06"),
            ("destination_service_name", "api"),
            ("destination_service_namespace", "shop"),
            ("destination_cluster", "east"),
        ]
    }

    fn unknown_destination() -> Vec<(&'static str, &'static str)> {
        [
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
            "destination_service",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_service_name",
            "destination_service_namespace",
            "destination_cluster",
        ]
        .map(|k| (k, UNKNOWN))
        .to_vec()
    }

    struct Peers {
        web: Arc<Workload>,
        api: Arc<Workload>,
        svc: Arc<Service>,
    }

    fn peers() -> Peers {
        Peers {
            web: workload("shop", "web", &[("app", "web"), ("version", "v1")]),
            api: workload(
                "shop",
                "api",
                &[
                    ("app", "api"),
                    ("service.istio.io/canonical-name", "catalog"),
                    ("app.kubernetes.io/version", "2024-06"),
                ],
            ),
            svc: service("shop", "api"),
        }
    }

    fn mtls(source: Option<&str>, destination: Option<&str>) -> PeerSecurity {
        PeerSecurity::MutualTls {
            source: source.map(Principal::new),
            destination: destination.map(Principal::new),
        }
    }

    /// Every reporter and kind of peer security: the exact series each one writes, labels in
    /// Istio's order.
    #[test]
    fn tcp_label_sets_per_reporter_and_security() {
        let metrics = Metrics::with_cluster_id("east");
        let Peers { web, api, svc } = peers();
        let same_node = metrics.peers.same_node(Some(&web), Some(&api));
        struct Case {
            name: &'static str,
            reporter: Reporter,
            known: bool,
            security: PeerSecurity,
            source_principal: &'static str,
            destination_principal: &'static str,
            policy: &'static str,
        }
        let cases = [
            Case {
                name: "plaintext, source",
                reporter: Reporter::Source,
                known: true,
                security: PeerSecurity::None,
                source_principal: UNKNOWN,
                destination_principal: UNKNOWN,
                policy: "unknown",
            },
            Case {
                name: "plaintext, destination",
                reporter: Reporter::Destination,
                known: true,
                security: PeerSecurity::None,
                source_principal: UNKNOWN,
                destination_principal: UNKNOWN,
                policy: "none",
            },
            Case {
                name: "same node, source",
                reporter: Reporter::Source,
                known: true,
                security: same_node.clone(),
                source_principal: WEB_ID,
                destination_principal: API_ID,
                policy: "unknown",
            },
            Case {
                name: "same node, destination",
                reporter: Reporter::Destination,
                known: true,
                security: same_node,
                source_principal: WEB_ID,
                destination_principal: API_ID,
                policy: "mutual_tls",
            },
            Case {
                name: "mTLS, destination, client identity only",
                reporter: Reporter::Destination,
                known: true,
                security: mtls(Some(WEB_ID), None),
                source_principal: WEB_ID,
                destination_principal: UNKNOWN,
                policy: "mutual_tls",
            },
            Case {
                name: "nobody known, plaintext",
                reporter: Reporter::Destination,
                known: false,
                security: PeerSecurity::None,
                source_principal: UNKNOWN,
                destination_principal: UNKNOWN,
                policy: "none",
            },
        ];
        for case in &cases {
            let (source, destination, service) = if case.known {
                (Some(&web), Some(&api), Some(&svc))
            } else {
                (None, None, None)
            };
            let labels = metrics.tcp_labels(
                case.reporter,
                source,
                destination,
                service,
                case.security.clone(),
            );
            let connection = metrics.open_connection(labels);
            connection.received(100);
            connection.sent(7);
            connection.close(ResponseFlags::NONE);

            let text = metrics.encode().unwrap();
            let mut expected = vec![("reporter", case.reporter.as_str())];
            let principal = |labels: Vec<(&'static str, &'static str)>, principal| {
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            if k.ends_with("_principal") {
                                principal
                            } else {
                                v
                            },
                        )
                    })
                    .collect::<Vec<_>>()
            };
            if case.known {
                expected.extend(principal(web_source(""), case.source_principal));
                expected.extend(principal(api_destination(""), case.destination_principal));
            } else {
                expected.extend(unknown_source());
                expected.extend(unknown_destination());
            }
            expected.extend([
                ("request_protocol", "tcp"),
                ("response_flags", "-"),
                ("connection_security_policy", case.policy),
            ]);
            for (metric, value) in [
                ("istio_tcp_connections_opened_total", "1"),
                ("istio_tcp_connections_closed_total", "1"),
                ("istio_tcp_received_bytes_total", "100"),
                ("istio_tcp_sent_bytes_total", "7"),
            ] {
                let want = (series(metric, &expected), value.to_owned());
                assert!(
                    samples(&text, metric).contains(&want),
                    "{}: {} missing from\n{text}",
                    case.name,
                    want.0
                );
            }
        }
        let text = metrics.encode().unwrap();
        assert_eq!(
            samples(&text, "istio_tcp_connections_opened_total").len(),
            cases.len(),
            "one series per case:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_connection_counts_as_closed_with_its_flags_when_it_ends() {
        let metrics = Metrics::new();
        let Peers { web, .. } = peers();
        let labels =
            || metrics.tcp_labels(Reporter::Source, Some(&web), None, None, PeerSecurity::None);
        let closed = |m: &Metrics, flags: &str| {
            samples(&m.encode().unwrap(), "istio_tcp_connections_closed_total")
                .into_iter()
                .find(|(series, _)| series.contains(&format!("response_flags=\"{flags}\"")))
                .map(|(_, v)| v)
        };
        let clean = metrics.open_connection(labels());
        // The clean close's series exists from the open on.
        assert_eq!(closed(&metrics, "-").as_deref(), Some("0"));
        drop(clean);
        assert_eq!(closed(&metrics, "-").as_deref(), Some("1"));

        let failed = metrics.open_connection(labels());
        failed.close(ResponseFlag::UpstreamConnectionFailure.into());
        let overflowed = metrics.open_connection(labels());
        overflowed.close(ResponseFlag::UpstreamOverflow.into());
        assert_eq!(closed(&metrics, "-").as_deref(), Some("1"));
        assert_eq!(closed(&metrics, "UF").as_deref(), Some("1"));
        assert_eq!(closed(&metrics, "UO").as_deref(), Some("1"));
        // Opened (and bytes) never carry flags: they are counted before the end is known.
        let opened = samples(
            &metrics.encode().unwrap(),
            "istio_tcp_connections_opened_total",
        );
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert!(opened[0].0.contains("response_flags=\"-\""), "{opened:?}");
        assert_eq!(opened[0].1, "3");
    }

    #[test]
    fn peers_are_labelled_in_the_proxys_cluster() {
        for (metrics, cluster) in [
            (Metrics::new(), "Kubernetes"),
            (Metrics::with_cluster_id("east"), "east"),
        ] {
            let Peers { web, api, .. } = peers();
            let labels = metrics.tcp_labels(
                Reporter::Source,
                Some(&web),
                Some(&api),
                None,
                PeerSecurity::None,
            );
            drop(metrics.open_connection(labels));
            let text = metrics.encode().unwrap();
            let opened = &samples(&text, "istio_tcp_connections_opened_total")[0].0;
            for label in ["source_cluster", "destination_cluster"] {
                assert!(
                    opened.contains(&format!("{label}=\"{cluster}\"")),
                    "{label} in {opened}"
                );
            }
        }
    }

    #[test]
    fn the_build_is_reported_as_istio_does() {
        let text = Metrics::new().encode().unwrap();
        assert!(
            text.contains(&format!(
                "istio_build{{component=\"proxy\",tag=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("# TYPE istio_build gauge"), "{text}");
    }

    fn http_labels(metrics: &Metrics, reporter: Reporter, security: PeerSecurity) -> HttpLabels {
        let Peers { web, api, svc } = peers();
        HttpLabels {
            reporter,
            source: metrics.peers.get(Some(&web)),
            destination: metrics.peers.get(Some(&api)),
            service: DestinationService::Service(svc),
            destination_version: Some("v2".into()),
            destination_subset: Some("v2".into()),
            security,
            request_protocol: "grpc",
            response_code: 200,
            grpc_response_status: Some(14),
            response_flags: ResponseFlag::UpstreamRetryLimitExceeded.into(),
        }
    }

    /// Each reporter's exact L7 series, same-node principals included.
    #[test]
    fn http_label_sets_per_reporter() {
        let metrics = Metrics::with_cluster_id("east");
        let Peers { web, api, .. } = peers();
        let same_node = metrics.peers.same_node(Some(&web), Some(&api));
        for (reporter, security, source, destination, policy) in [
            (
                Reporter::Source,
                PeerSecurity::None,
                UNKNOWN,
                UNKNOWN,
                "unknown",
            ),
            (
                Reporter::Source,
                same_node.clone(),
                WEB_ID,
                API_ID,
                "unknown",
            ),
            (
                Reporter::Destination,
                same_node,
                WEB_ID,
                API_ID,
                "mutual_tls",
            ),
            (
                Reporter::Destination,
                PeerSecurity::None,
                UNKNOWN,
                UNKNOWN,
                "none",
            ),
        ] {
            metrics.record_request(
                &http_labels(&metrics, reporter, security),
                &RequestSample {
                    duration_ms: 3.0,
                    request_bytes: 1,
                    response_bytes: 1,
                },
            );
            let mut expected = vec![("reporter", reporter.as_str())];
            expected.extend(web_source(source));
            let mut destination_half = api_destination(destination);
            // The cluster's version wins over the workload's; the subset follows it.
            destination_half[4] = ("destination_version", "v2");
            destination_half.insert(5, ("destination_subset", "v2"));
            expected.extend(destination_half);
            expected.extend([
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", "14"),
                ("response_flags", "URX"),
                ("connection_security_policy", policy),
            ]);
            let text = metrics.encode().unwrap();
            let want = series("istio_requests_total", &expected);
            assert!(
                samples(&text, "istio_requests_total").contains(&(want.clone(), "1".into())),
                "{want} missing from\n{text}"
            );
        }
    }

    #[test]
    fn http_destinations_name_what_is_known() {
        let metrics = Metrics::new();
        let mut entry_host = http_labels(&metrics, Reporter::Source, PeerSecurity::None);
        entry_host.service = DestinationService::Host("db.example.internal".into());
        entry_host.destination = None;
        entry_host.destination_version = None;
        entry_host.destination_subset = None;
        entry_host.grpc_response_status = None;
        entry_host.request_protocol = "http";
        metrics.record_request(
            &entry_host,
            &RequestSample {
                duration_ms: 1.0,
                request_bytes: 1,
                response_bytes: 1,
            },
        );
        let text = metrics.encode().unwrap();
        let requests = samples(&text, "istio_requests_total");
        assert_eq!(requests.len(), 1, "{text}");
        for label in [
            "destination_service=\"db.example.internal\"",
            "destination_service_name=\"db.example.internal\"",
            "destination_service_namespace=\"unknown\"",
            "destination_version=\"unknown\"",
            "destination_subset=\"unknown\"",
            "destination_canonical_service=\"unknown\"",
            "destination_cluster=\"unknown\"",
            "grpc_response_status=\"\"",
        ] {
            assert!(
                requests[0].0.contains(label),
                "{label} in {}",
                requests[0].0
            );
        }
    }

    #[test]
    fn equal_services_are_one_label_value() {
        let (a, b) = (service("shop", "api"), service("shop", "api"));
        let hash = |s: &DestinationService| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            s.hash(&mut hasher);
            hasher.finish()
        };
        let (a, b) = (
            DestinationService::Service(a),
            DestinationService::Service(b),
        );
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        for other in [
            DestinationService::Service(service("shop", "web")),
            DestinationService::Service(service("other", "api")),
            DestinationService::Host("api.shop.svc.cluster.local".into()),
            DestinationService::Unknown,
        ] {
            assert_ne!(a, other, "{other:?}");
        }
    }

    #[test]
    fn requests_render_with_istio_buckets() {
        let metrics = Metrics::new();
        let labels = http_labels(&metrics, Reporter::Source, PeerSecurity::None);
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
