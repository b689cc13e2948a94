//! Upstream cluster metrics: outlier ejections, pool overflows, open connections.
#![forbid(unsafe_code)]

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Envoy's cluster name: `outbound|8080|v1|cart.shop.svc.cluster.local`.
    pub cluster: String,
    /// `ip:port`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub cluster: String,
    /// Which limit: `max_connections`, `max_pending_requests`, `max_requests`, `max_retries`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

/// The handles; cheap to clone families share their samples.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    pub(super) ejections: Family<EndpointLabels, Counter>,
    pub(super) ejected: Family<EndpointLabels, Gauge>,
    pub(super) overflows: Family<OverflowLabels, Counter>,
    pub(super) connections: Family<ClusterLabels, Gauge>,
    same_node_connections: Counter,
}

impl UpstreamMetrics {
    /// The metrics, registered in `registry` (counters get `_total` from the encoder):
    /// `shunt_outlier_ejections_total{cluster,endpoint}`, `shunt_outlier_ejected{cluster,endpoint}`,
    /// `shunt_upstream_overflow_total{cluster,limit}`, `shunt_upstream_connections{cluster}`,
    /// `shunt_same_node_connections_total`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "shunt_outlier_ejections",
            "Endpoints ejected by outlier detection",
            metrics.ejections.clone(),
        );
        registry.register(
            "shunt_outlier_ejected",
            "Whether outlier detection has the endpoint ejected now (1) or not (0)",
            metrics.ejected.clone(),
        );
        registry.register(
            "shunt_upstream_overflow",
            "Requests refused because a connectionPool limit was reached (response flag UO)",
            metrics.overflows.clone(),
        );
        registry.register(
            "shunt_upstream_connections",
            "Open upstream connections per cluster",
            metrics.connections.clone(),
        );
        registry.register(
            "shunt_same_node_connections",
            "Upstream connections (TCP, and HTTP pool connections) opened straight into the \
             netns of a destination pod this proxy serves, skipping its inbound listener",
            metrics.same_node_connections.clone(),
        );
        metrics
    }

    /// A connection was delivered into a served pod's netns (same-node delivery).
    pub fn same_node_connection(&self) {
        self.same_node_connections.inc();
    }

    pub(super) fn overflow(&self, cluster: &str, limit: &'static str) {
        self.overflows
            .get_or_create(&OverflowLabels {
                cluster: cluster.to_owned(),
                limit,
            })
            .inc();
    }
}
