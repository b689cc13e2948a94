//! Istio's L4 metrics (`istio_tcp_*`) with Istio's standard labels.
#![forbid(unsafe_code)]

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Reporter;
use crate::state::{Service, Workload};

/// What `GET /metrics` answers with: the OpenMetrics text format that `prometheus-client`
/// writes, which Prometheus asks for first in its `Accept` header.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Istio's value for anything the proxy cannot name.
pub const UNKNOWN: &str = "unknown";

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
        let workload = |w: Option<&Workload>| {
            w.map_or((UNKNOWN.to_owned(), UNKNOWN.to_owned()), |w| {
                (w.workload_name.clone(), w.namespace.clone())
            })
        };
        let (source_workload, source_workload_namespace) = workload(source);
        let (destination_workload, destination_workload_namespace) = workload(destination);
        let (destination_service, destination_service_name, destination_service_namespace) =
            service.map_or_else(
                || (UNKNOWN.to_owned(), UNKNOWN.to_owned(), UNKNOWN.to_owned()),
                |s| (s.hostname(), s.name.clone(), s.namespace.clone()),
            );
        Self {
            reporter,
            source_workload,
            source_workload_namespace,
            source_principal: UNKNOWN.to_owned(),
            destination_workload,
            destination_workload_namespace,
            destination_service,
            destination_service_name,
            destination_service_namespace,
            request_protocol: "tcp",
        }
    }
}

/// The proxy's metrics registry.
pub struct Metrics {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent_bytes: Family<TcpLabels, Counter>,
    received_bytes: Family<TcpLabels, Counter>,
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
        Self {
            registry,
            opened,
            closed,
            sent_bytes,
            received_bytes,
        }
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
    use std::collections::BTreeMap;

    fn workload(namespace: &str, name: &str) -> Workload {
        Workload {
            uid: format!("{namespace}/{name}-0"),
            namespace: namespace.into(),
            name: format!("{name}-0"),
            workload_name: name.into(),
            service_account: "default".into(),
            ip: None,
            labels: BTreeMap::new(),
            captured: true,
            ready: true,
            ports: vec![],
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
}
