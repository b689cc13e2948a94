//! One flow event as the proxy streams it (`GET /flows` on its metrics port, NDJSON: one
//! [`Flow`] a line), which `shuntctl flows` reads.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowType {
    /// A TCP connection was accepted and its destination decided.
    TcpOpen,
    /// A TCP connection ended: bytes, RTT, retransmits, duration.
    TcpClose,
    /// An HTTP (or gRPC) request was answered: method, path, code, latency.
    Http,
}

impl FlowType {
    /// As in the JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpOpen => "tcp_open",
            Self::TcpClose => "tcp_close",
            Self::Http => "http",
        }
    }
}

/// Hubble's verdicts, as the proxy judges them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Forwarded,
    /// Refused by policy: an authorization denial, or a `REGISTRY_ONLY` block.
    Dropped,
    /// The proxy could not deliver it: Envoy's upstream failure flags (`UF`, `UH`, `URX`, ...).
    Error,
}

impl Verdict {
    /// As in the JSON and on `--verdict`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "FORWARDED",
            Self::Dropped => "DROPPED",
            Self::Error => "ERROR",
        }
    }
}

/// One event of the proxy's flow ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Increasing per proxy: a follower asks for what comes after the last it saw.
    pub seq: u64,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(rename = "type")]
    pub kind: FlowType,
    pub verdict: Verdict,
    /// `source` or `destination`: which end the proxy reported from.
    pub reporter: String,
    /// `namespace/name` of the pod whose listener accepted the connection.
    pub pod: String,
    /// `tcp`, `http` or `grpc`.
    pub protocol: String,
    /// The client's pod, `namespace/name` (`unknown` outside the mesh).
    pub src_pod: String,
    /// The server's pod, `namespace/name` (`unknown` outside the mesh).
    pub dst_pod: String,
    pub src_addr: String,
    pub dst_addr: String,
    /// The original destination's port (0 when unknown).
    pub dst_port: u16,
    pub src_workload: String,
    pub src_namespace: String,
    pub dst_workload: String,
    pub dst_namespace: String,
    /// The destination Service's FQDN, or `unknown`.
    pub dst_service: String,
    /// Envoy's flags, comma-joined; `-` for none.
    pub response_flags: String,
    /// Why it ended or was refused (the access log's `error` or `response_code_details`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `tcp_close` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSummary>,
    /// `http` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSummary>,
}

/// A closed connection's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpSummary {
    /// Client → server.
    pub bytes_received: u64,
    /// Server → client.
    pub bytes_sent: u64,
    pub duration_ms: u64,
    /// The upstream socket's smoothed RTT, when it crossed the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
}

/// An answered request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSummary {
    pub method: String,
    pub path: String,
    /// 0 when no response was sent.
    pub code: u16,
    pub latency_ms: u64,
}
