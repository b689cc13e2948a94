//! HBONE metrics: the pool's connections and streams, and handshake failures by reason.
#![forbid(unsafe_code)]

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `direction`: `outbound` (this proxy dialled) or `inbound` (a peer dialled this proxy).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// Why a handshake failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: &'static str,
    /// `connect`, `tls`, `h2`, `no_certificate`, `status`.
    pub reason: &'static str,
}

/// The handles (families share their samples).
#[derive(Debug, Default)]
pub struct HboneMetrics {
    pub(super) connections: Family<DirectionLabels, Gauge>,
    pub(super) connections_opened: Family<DirectionLabels, Counter>,
    pub(super) streams: Family<DirectionLabels, Gauge>,
    pub(super) streams_opened: Family<DirectionLabels, Counter>,
    pub(super) failures: Family<FailureLabels, Counter>,
}

pub const OUTBOUND: &str = "outbound";
pub const INBOUND: &str = "inbound";

impl HboneMetrics {
    /// The metrics, registered in `registry`: `shunt_hbone_connections{direction}` (open now),
    /// `shunt_hbone_connections_opened_total{direction}`, `shunt_hbone_streams{direction}`,
    /// `shunt_hbone_streams_opened_total{direction}` and
    /// `shunt_hbone_handshake_failures_total{direction,reason}`.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "shunt_hbone_connections",
            "Open HBONE (mTLS HTTP/2) connections",
            metrics.connections.clone(),
        );
        registry.register(
            "shunt_hbone_connections_opened",
            "HBONE connections established",
            metrics.connections_opened.clone(),
        );
        registry.register(
            "shunt_hbone_streams",
            "Open HBONE CONNECT streams (one per tunnelled connection)",
            metrics.streams.clone(),
        );
        registry.register(
            "shunt_hbone_streams_opened",
            "HBONE CONNECT streams opened",
            metrics.streams_opened.clone(),
        );
        registry.register(
            "shunt_hbone_handshake_failures",
            "HBONE connections or streams that failed to establish, by reason",
            metrics.failures.clone(),
        );
        metrics
    }

    pub fn failure(&self, direction: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }

    pub(super) fn connection_opened(&self, direction: &'static str) -> Gauge {
        let labels = DirectionLabels { direction };
        self.connections_opened.get_or_create(&labels).inc();
        let gauge = self.connections.get_or_create(&labels).clone();
        gauge.inc();
        gauge
    }

    pub(super) fn stream_opened(&self, direction: &'static str) -> Gauge {
        let labels = DirectionLabels { direction };
        self.streams_opened.get_or_create(&labels).inc();
        let gauge = self.streams.get_or_create(&labels).clone();
        gauge.inc();
        gauge
    }
}

/// Decrements its gauge when dropped: an open connection or stream.
#[derive(Debug)]
pub(super) struct Open(pub Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
