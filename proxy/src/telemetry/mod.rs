//! What the proxy reports: Prometheus metrics, the metrics endpoint, the access log, the
//! flow ring and tracing spans.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod export;
pub mod exposition;
pub mod flows;
pub mod json_line;
pub mod metrics;
pub mod peer;
pub mod saturation;
pub mod security;
pub mod server;
pub mod tcp;
pub mod trace;
pub mod trace_otlp;

use serde::Serialize;

/// Istio's value for anything the proxy cannot name.
pub const UNKNOWN: &str = "unknown";

/// Istio's `reporter`: which end of the connection the proxy stands at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reporter {
    /// The proxy serves the client's pod (outbound).
    Source,
    /// The proxy serves the server's pod (inbound).
    Destination,
}

impl Reporter {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}
