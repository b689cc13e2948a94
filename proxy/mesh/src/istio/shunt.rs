//! shunt's own kind, `shunt.io/v1alpha1 RateLimitPolicy`, and Istio's mesh settings
//! (`data.mesh` of the ConfigMap `istio-system/istio`).

use serde::{Deserialize, Serialize};

use super::decimal::Decimal;

/// `RateLimitPolicy.spec`: one local token bucket per policy per node proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// A host as in a VirtualService (short name, FQDN, ServiceEntry host): every request to
    /// it. Exactly one of `service` and `virtualService`.
    pub service: Option<String>,
    /// One named `http` route of a VirtualService in the policy's namespace.
    pub virtual_service: Option<VirtualServiceRouteRef>,
    /// Tokens added per second; > 0, may be fractional.
    pub requests_per_second: Option<Decimal>,
    /// The bucket's size, >= 1; default `ceil(requestsPerSecond)`.
    pub burst: Option<i64>,
}

/// `RateLimitPolicy.spec.virtualService`: one named `http` route of a VirtualService.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualServiceRouteRef {
    /// `name`: the VirtualService's name, in the policy's namespace.
    pub name: String,
    /// `route`: the `spec.http[].name` of the route to limit.
    pub route: String,
}

/// The parts of Istio's MeshConfig shunt reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct MeshConfig {
    /// `outboundTrafficPolicy`; see [`crate::settings::OutboundTrafficPolicy`].
    pub outbound_traffic_policy: Option<OutboundTrafficPolicyConfig>,
    /// `protocolDetectionTimeout`, a duration string (`"100ms"`); see [`super::parse_duration`].
    pub protocol_detection_timeout: Option<String>,
    /// `""` turns the access log off; `/dev/stdout` (or unset) writes it to the proxy's stdout.
    pub access_log_file: Option<String>,
    /// `trustDomain`: the SPIFFE trust domain; absent: `cluster.local`.
    pub trust_domain: Option<String>,
    /// `rootNamespace`: the namespace of mesh-wide policies; absent: `istio-system`.
    pub root_namespace: Option<String>,
    /// `extensionProviders`, as written: [`crate::ext_authz::extension_providers`] reads each
    /// one field by field, so a bad provider is refused alone and names its field.
    pub extension_providers: Vec<serde_json::Value>,
    /// `pathNormalization`; see [`crate::http_path::PathNormalization`].
    pub path_normalization: Option<PathNormalizationConfig>,
    /// `ingressClass`: the Ingress class served; absent: `istio`.
    pub ingress_class: Option<String>,
    /// `ingressSelector`: the gateway pods' `istio` label; absent: `ingressgateway`.
    pub ingress_selector: Option<String>,
    /// `defaultConfig`: the ProxyConfig defaults; shunt reads `gatewayTopology` and
    /// `tracing.sampling`.
    pub default_config: Option<ProxyConfigDefaults>,
    /// `defaultProviders`: shunt reads `tracing`, the tracing providers the mesh reports to.
    pub default_providers: Option<DefaultProviders>,
}

/// MeshConfig `defaultProviders`, the part shunt reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct DefaultProviders {
    /// `tracing`: names of `extensionProviders` (`zipkin` or `opentelemetry`).
    pub tracing: Vec<String>,
}

/// ProxyConfig `tracing`, the part shunt reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyTracing {
    /// `sampling`: the percentage (0.0-100.0) of undecided requests traced. Any value, so
    /// that a wrong one is refused by field rather than failing the document.
    pub sampling: Option<serde_json::Value>,
}

/// MeshConfig `defaultConfig` (ProxyConfig), the part shunt reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyConfigDefaults {
    /// `gatewayTopology`.
    pub gateway_topology: Option<GatewayTopology>,
    /// `tracing`.
    pub tracing: Option<ProxyTracing>,
}

/// ProxyConfig `gatewayTopology`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct GatewayTopology {
    /// `numTrustedProxies`: the `X-Forwarded-For` hops a gateway trusts. Any value, so that
    /// a wrong one is refused by field (and fails closed) rather than failing the document.
    pub num_trusted_proxies: Option<serde_json::Value>,
}

/// `pathNormalization` of MeshConfig.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct PathNormalizationConfig {
    /// `NONE`, `BASE` (default; also `DEFAULT`), `MERGE_SLASHES` or `DECODE_AND_MERGE_SLASHES`.
    pub normalization: Option<String>,
}

/// `outboundTrafficPolicy` of MeshConfig.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct OutboundTrafficPolicyConfig {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    pub mode: Option<String>,
}

/// The ConfigMap that holds Istio's MeshConfig.
pub const MESH_CONFIG_MAP: (&str, &str) = ("istio-system", "istio");
