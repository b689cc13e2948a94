//! What can go wrong sending to an upstream cluster, and which failures Envoy would retry.

use shunt_mesh::ids::EndpointAddr;
use std::time::Duration;

use shunt_mesh::routing::ClusterKey;

use super::dns;
use super::tls::TlsError;
use crate::response_flag::{ResponseFlag, ResponseFlags};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "cluster {cluster} has no healthy endpoint (no ready pod matches the destination and \
         subset, or outlier detection ejected them all)"
    )]
    NoHealthyUpstream { cluster: ClusterKey },
    #[error(
        "cluster {cluster} load-balances PASSTHROUGH: the original destination is dialled, no \
         endpoint is picked"
    )]
    Passthrough { cluster: ClusterKey },
    #[error("cluster {cluster} of {service_entry} (resolution DNS): {source}")]
    Dns {
        cluster: ClusterKey,
        service_entry: String,
        source: dns::Error,
    },
    #[error(
        "cluster {cluster} is at its connectionPool limit {limit} (raise it in the \
         DestinationRule if this load is expected)"
    )]
    Overflow {
        cluster: String,
        limit: &'static str,
    },
    #[error("cannot connect to upstream endpoint {addr}: {source}")]
    Connect {
        addr: EndpointAddr,
        // Boxed: the socket error is large and this error travels in every `Result`.
        source: Box<super::DialError>,
    },
    /// DestinationRule `tls`: the handshake failed, or the cluster's settings refuse every
    /// connection ([`TlsError::is_handshake`] tells which).
    #[error("TLS to upstream endpoint {addr}: {source}")]
    Tls {
        addr: EndpointAddr,
        // Shared: a refusal is built once per policy and returned to every connection.
        source: std::sync::Arc<TlsError>,
    },
    #[error(
        "HTTP handshake with upstream endpoint {addr} failed (is it serving HTTP/2?): {source}"
    )]
    Handshake {
        addr: EndpointAddr,
        source: hyper::Error,
    },
    #[error("HTTP/2 handshake with upstream endpoint {addr} timed out after {timeout:?}")]
    HandshakeTimeout {
        addr: EndpointAddr,
        timeout: Duration,
    },
    #[error("upstream endpoint {addr} closed or reset the connection before answering: {source}")]
    Reset {
        addr: EndpointAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Envoy's response flag for this failure: one flag, or none for
    /// [`UpstreamError::Passthrough`] (not a failure of the request: the caller dials the
    /// original destination). A set so that "none" renders as Envoy's `-`.
    #[must_use]
    pub fn response_flag(&self) -> ResponseFlags {
        match self {
            Self::NoHealthyUpstream { .. } | Self::Dns { .. } => {
                ResponseFlag::NoHealthyUpstream.into()
            }
            Self::Passthrough { .. } => ResponseFlags::NONE,
            Self::Overflow { .. } => ResponseFlag::UpstreamOverflow.into(),
            // A refusal too: Envoy's cluster would have no usable transport socket.
            Self::Connect { .. }
            | Self::Tls { .. }
            | Self::Handshake { .. }
            | Self::HandshakeTimeout { .. } => ResponseFlag::UpstreamConnectionFailure.into(),
            Self::Reset { .. } => ResponseFlag::UpstreamConnectionTermination.into(),
        }
    }

    /// `retryOn: connect-failure` (a TLS handshake failure is one; settings that refuse every
    /// connection are not, since another try would be refused the same way).
    #[must_use]
    pub fn is_connect_failure(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Handshake { .. } | Self::HandshakeTimeout { .. } => true,
            Self::Tls { source, .. } => source.is_handshake(),
            _ => false,
        }
    }

    /// `retryOn: reset`.
    #[must_use]
    pub fn is_reset(&self) -> bool {
        matches!(self, Self::Reset { .. })
    }

    /// `retryOn: refused-stream`: the h2 peer refused the stream (REFUSED_STREAM), so the
    /// request was not processed.
    #[must_use]
    pub fn is_refused_stream(&self) -> bool {
        let Self::Reset { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(error) = cause {
            if let Some(h2) = error.downcast_ref::<h2::Error>() {
                return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            }
            cause = error.source();
        }
        false
    }

    /// Whether outlier detection counts it against the endpoint (a local-origin failure).
    #[must_use]
    pub fn is_gateway_error(&self) -> bool {
        self.is_connect_failure() || self.is_reset()
    }
}
