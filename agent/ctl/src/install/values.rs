//! The installer's values: one typed tree, read from the profile, `-f` files and `--set`
//! merged in that order. Every struct denies unknown fields, so a misspelt key fails with its
//! path instead of being ignored. Istio's own keys (`meshConfig.*`, `values.global.*`) are
//! accepted where shunt acts on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Everything `shuntctl install` renders from. Every field is required: the default profile
/// spells each one out, so `shuntctl profile show default` is the complete reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Values {
    /// Where shunt's objects live.
    pub namespace: String,
    pub image: Image,
    /// Both DaemonSets. `system-node-critical` keeps them from being evicted before the pods
    /// they capture; outside kube-system GKE admits it only with `resourceQuota.enabled`.
    pub priority_class_name: String,
    /// Both DaemonSets, beside `kubernetes.io/os: linux`.
    pub node_selector: BTreeMap<String, String>,
    /// Both DaemonSets. The default tolerates every taint: a node whose pods are meshed must
    /// run shunt whatever its taints.
    pub tolerations: Vec<Toleration>,
    /// Nodes not to run on: a label key and the values that exclude a node (a `NotIn` node
    /// affinity term), e.g. EKS Fargate, which runs no DaemonSets.
    pub exclude_node_labels: BTreeMap<String, Vec<String>>,
    pub agent: Agent,
    pub proxy: Proxy,
    pub cni: Cni,
    pub ca: Ca,
    pub resource_quota: ResourceQuota,
    pub crds: Crds,
    /// Istio's MeshConfig, the fields shunt reads.
    pub mesh_config: MeshConfig,
    /// Istio's Helm values, the ones shunt reads (`values.global.*`).
    pub values: IstioValues,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Image {
    /// e.g. `ghcr.io/example/shunt`; the image holds shunt-agent, shunt-proxy and shuntctl.
    pub repository: String,
    /// A tag; `--set image.tag=1` is read as the string "1".
    #[serde(deserialize_with = "string_or_number")]
    pub tag: String,
    pub pull_policy: PullPolicy,
}

impl Image {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A taint toleration, as in a Pod spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; absent: all effects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A container's requests and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceList {
    /// A Kubernetes quantity, e.g. `100m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// A Kubernetes quantity, e.g. `128Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// The `shunt-agent` DaemonSet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Agent {
    /// `--capture`.
    pub capture: CaptureMode,
    /// `--sockmap-shortcut`.
    pub sockmap_shortcut: bool,
    /// `--bpf-log`.
    pub bpf_log: BpfLog,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// The node's bpffs mount, mounted at the same path with `Bidirectional` propagation so
    /// the agent's pins outlive its container.
    pub bpffs_host_path: String,
    /// The node's cgroup2 root, mounted read-only at `/host<path>` and passed as `--cgroup`:
    /// the container's own `/sys/fs/cgroup` is its cgroup namespace's, not the node's root.
    pub cgroup_host_path: String,
    pub resources: Resources,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    Ebpf,
    Iptables,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl BpfLog {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The `shunt-proxy` DaemonSet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Proxy {
    /// `--worker-threads`; absent: one per CPU the pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<u16>,
    /// `--drain-timeout`, and the pod's grace period beyond it.
    pub drain_timeout_seconds: u32,
    /// `--metrics-addr` 0.0.0.0:PORT, also the probes' port.
    pub metrics_port: u16,
    /// `--log-format`.
    pub log_format: LogFormat,
    pub resources: Resources,
}

/// Where the node's container runtime keeps CNI binaries and configs, mounted into the agent
/// (GKE: binaries in `/home/kubernetes/bin`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cni {
    pub bin_dir: String,
    pub conf_dir: String,
}

/// Where the proxies get workload certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ca {
    pub mode: CaMode,
    /// The CA's `HOST:PORT` (`--ca-address`).
    pub address: String,
    /// The name its TLS certificate carries (`--ca-server-name`).
    pub server_name: String,
    /// The ConfigMap in `namespace` with the mesh's root as `root-cert.pem` (istiod writes
    /// `istio-ca-root-cert` into every namespace).
    pub root_cert_config_map: String,
    /// The audience of the proxy's projected service-account token (istiod: `istio-ca`).
    pub token_audience: String,
    /// The `shunt-ca` Deployment's container (`mode: shunt`).
    pub resources: Resources,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaMode {
    /// istiod issues the certificates; its `CA_TRUSTED_NODE_ACCOUNTS` must name the proxy's
    /// service account.
    Istiod,
    /// shunt's own CA, a one-replica Deployment `shunt-ca` (`shunt-agent --ca-only`) behind
    /// the Service `shunt-ca`: its root from `istio-system/cacerts` or `istio-ca-secret`,
    /// nodes authenticated by TokenReview, the trust bundle published to
    /// `rootCertConfigMap` in shunt's namespace.
    Shunt,
    /// No identities: no HBONE, traffic between nodes stays plaintext.
    None,
}

/// GKE admits `system-node-critical` pods outside kube-system only into a namespace with a
/// ResourceQuota scoped to that priority class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceQuota {
    pub enabled: bool,
    /// How many such pods the quota allows.
    pub pods: u32,
}

/// The CustomResourceDefinitions of the kinds shunt reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Crds {
    /// The Istio kinds shunt implements (VirtualService, DestinationRule, Gateway,
    /// ServiceEntry, PeerAuthentication, RequestAuthentication, AuthorizationPolicy). `false`
    /// for a cluster that has Istio's own; shunt's RateLimitPolicy is always rendered.
    pub istio: bool,
}

/// MeshConfig (`meshConfig.*`), the fields shunt's agent reads from `istio-system/istio`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `""` turns the access log off; `/dev/stdout` writes it to the proxy's stdout.
    pub access_log_file: String,
    /// A duration, e.g. `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<String>,
    pub trust_domain: String,
    pub root_namespace: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

/// `values.*`: Istio's Helm values shunt reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioValues {
    pub global: Global,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Global {
    pub proxy: GlobalProxy,
    pub multi_cluster: MultiCluster,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalProxy {
    /// shunt's proxy writes its access log as JSON only; `TEXT` is refused at render time
    /// rather than silently ignored.
    pub access_log_encoding: AccessLogEncoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessLogEncoding {
    Json,
    Text,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MultiCluster {
    /// `--cluster-id`: the proxy's `source_cluster`/`destination_cluster` (istiod's
    /// `CLUSTER_ID`).
    pub cluster_name: String,
}

/// A string that `--set` may have coerced to a number (`image.tag=1`).
fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Int(i64),
        Float(f64),
    }
    Ok(match Text::deserialize(deserializer)? {
        Text::String(s) => s,
        Text::Int(n) => n.to_string(),
        Text::Float(f) => f.to_string(),
    })
}
