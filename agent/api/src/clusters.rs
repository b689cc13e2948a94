//! What the proxy reports of its upstream clusters (`/debug/clusters` on its metrics port),
//! which `shuntctl clusters` reads.

use std::collections::BTreeMap;

/// `/debug/clusters`: per cluster (Envoy's name), its endpoints' state.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClustersDump {
    pub clusters: BTreeMap<String, ClusterDump>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterDump {
    pub load_balancer: String,
    /// Open connections (all endpoints).
    pub connections: u32,
    /// Requests waiting for a connection.
    pub pending_requests: u32,
    /// Requests in flight (until their response body ends).
    pub active_requests: u32,
    pub active_retries: u32,
    pub endpoints: Vec<EndpointDump>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EndpointDump {
    pub addr: String,
    pub weight: u32,
    pub active_requests: u32,
    pub ejected: bool,
    /// Seconds until the ejection ends, when ejected.
    pub ejected_until: Option<f64>,
    pub times_ejected: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub idle_connections: usize,
    pub h2_connections: usize,
}
