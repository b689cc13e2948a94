//! The admin API's JSON bodies, shared by the agent (which serves them) and `shuntctl`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shunt_mesh::ids::PodUid;

pub use shunt_mesh::routing::explain::{
    AuthzExplanation, ClusterView, DestinationExplanation, DestinationView, ExplainRequest,
    Explanation, HostRoutes, RouteView,
};

use crate::capture::{CaptureMode, CaptureStatus, IptablesStatus};
use crate::config::{Config, LoadError};

/// `GET /status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    #[serde(default)]
    pub capture_mode: CaptureMode,
    /// eBPF capture's pin folder; `None` under iptables capture.
    pub pin_dir: Option<PathBuf>,
    /// The cgroup eBPF capture attaches to; `None` under iptables capture.
    pub cgroup: Option<PathBuf>,
    pub sockmap_shortcut: bool,
    /// What the capture mode reports.
    pub capture: CaptureReport,
    pub proxy: ProxyStatus,
    /// The CA mode (`--ca-listen`); `None` when the agent runs no CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaStatus>,
}

/// `Status::ca`: the mesh's CA, when this agent runs it (`shunt-agent --ca-listen`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// `--ca-listen`, as given.
    pub listen: SocketAddr,
    /// The address the CA serves on, once it runs (the port the system chose for port 0).
    #[serde(default)]
    pub serving: Option<SocketAddr>,
    /// Where the signing key and root come from, once loaded.
    #[serde(default)]
    pub source: Option<CaSource>,
    /// The trust bundle: the root the CA's chain ends in first, then the extra roots
    /// (`--ca-extra-root`).
    #[serde(default)]
    pub roots: Vec<CaRootStatus>,
    /// Where the trust bundle was written for the proxies (`--ca-root-cert`).
    #[serde(default)]
    pub root_file: Option<std::path::PathBuf>,
    /// `--ca-allow-unauthenticated`: anyone gets any identity.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Why the CA is not running (it retries when the config changes).
    #[serde(default)]
    pub error: Option<String>,
    /// Something the operator should know while it runs (e.g. a CA Secret changed: restart
    /// to load it).
    #[serde(default)]
    pub note: Option<String>,
}

/// Where the CA's signing key and root come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaSource {
    /// Istio's plug-in CA Secret (`cacerts`) or istiod's own (`istio-ca-secret`).
    Secret { namespace: String, name: String },
    /// The self-signed root generated once and kept in this folder.
    SelfSigned { dir: PathBuf },
}

/// One root of the CA's trust bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRootStatus {
    /// RFC 4514.
    pub subject: String,
    /// SHA-256 of the DER, upper-case hex pairs joined by `:` (as `openssl x509 -noout
    /// -fingerprint -sha256` prints it).
    pub sha256: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// `Status::capture`, by capture mode (the JSON is the report itself, untagged, as
/// `capture_mode` already says which).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CaptureReport {
    /// eBPF capture: programs, attach points, pins, maps, counters, kernel probe.
    Ebpf(Box<CaptureStatus>),
    /// iptables capture: each pod's rules.
    Iptables(IptablesStatus),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub connected: bool,
    pub pid: Option<u32>,
    /// Why the agent refused the last proxy that connected (it is then not connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One entry of `GET /workloads`: a pod of the config, captured or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub uid: PodUid,
    pub ip: Option<Ipv4Addr>,
    /// The pod's node (`spec.nodeName`, else the agent's); `None` from an agent older than
    /// node names.
    #[serde(default)]
    pub node: Option<String>,
    /// Whether the shunt of the pod's node captures it (this agent captures only its own
    /// node's pods).
    pub captured: bool,
    /// Why the pod is captured or not.
    pub reason: String,
    pub netns: Option<PathBuf>,
    /// Set once this agent holds the pod's netns: only for its own node's captured pods.
    pub netns_cookie: Option<u64>,
    /// `ready`, `pending`, `failed: <error>`, or `n/a` for a pod this agent does not hand to
    /// its proxy (not captured, or on another node).
    pub proxy: String,
}

/// `GET /config`: every object loaded, and the errors of the last load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDump {
    pub dir: PathBuf,
    #[serde(flatten)]
    pub config: Config,
    pub errors: Vec<LoadError>,
}

/// `POST /uninstall`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uninstalled {
    /// The pins (links and maps) and folders that were removed.
    pub removed: Vec<PathBuf>,
}

/// The body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /routes/<NAMESPACE>/<POD>`: the effective routes of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoutes {
    /// `namespace/name`.
    pub pod: String,
    pub hosts: Vec<HostRoutes>,
}

/// `GET /policies/<NAMESPACE>/<POD>`: a workload's effective security policies, each kind
/// in its evaluation order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPolicies {
    /// `namespace/name`.
    pub pod: String,
    /// PeerAuthentication: the mode of each declared port, then of any other port
    /// (`port: null`), and what decided it.
    pub peer_authentication: Vec<PortMtls>,
    /// RequestAuthentication: the policies whose JWT rules apply, root namespace first
    /// (`namespace/name`, and `(rejected: ...)` for a stand-in).
    pub request_authentication: Vec<String>,
    /// AuthorizationPolicy, in evaluation order: CUSTOM, DENY, ALLOW, AUDIT.
    pub authorization: Vec<String>,
}

/// One port's PeerAuthentication mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMtls {
    /// `None`: every port not listed.
    pub port: Option<u16>,
    /// e.g. `STRICT by shop/default (namespace-wide)`.
    pub decision: String,
}

/// The body of `POST /explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// The sending pod, `namespace/name`.
    pub from: String,
    #[serde(flatten)]
    pub request: ExplainRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_sources_are_tagged_by_kind_and_a_ca_status_needs_only_its_address() {
        for (source, json) in [
            (
                CaSource::Secret {
                    namespace: "istio-system".into(),
                    name: "cacerts".into(),
                },
                serde_json::json!({"kind": "secret", "namespace": "istio-system", "name": "cacerts"}),
            ),
            (
                CaSource::SelfSigned {
                    dir: "/var/lib/shunt/default/ca/self-signed".into(),
                },
                serde_json::json!({"kind": "self_signed", "dir": "/var/lib/shunt/default/ca/self-signed"}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&source).unwrap(), json);
            assert_eq!(serde_json::from_value::<CaSource>(json).unwrap(), source);
        }
        // Only `listen` is required: a status from an agent that knows less still reads.
        let status: CaStatus =
            serde_json::from_value(serde_json::json!({"listen": "0.0.0.0:15012"})).unwrap();
        assert_eq!(status.serving, None);
        assert!(status.roots.is_empty() && !status.allow_unauthenticated);
    }
}
