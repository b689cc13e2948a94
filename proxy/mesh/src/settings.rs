//! Mesh-wide settings: Istio's MeshConfig as shunt applies it, with the agent's flags.

use std::time::Duration;

use crate::http_path::PathNormalization;

/// `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// `ALLOW_ANY` (the default): a destination outside the registry is dialled unchanged.
    #[default]
    AllowAny,
    /// `REGISTRY_ONLY`: a destination outside the registry is refused (HTTP 502 NR, TCP closed).
    RegistryOnly,
}

/// Istio's default `trustDomain`.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Istio's default `rootNamespace`.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Mesh-wide settings (MeshConfig, or the agent's flags, which win).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// `outboundTrafficPolicy.mode`, or the agent's `--outbound-traffic-policy`, which wins.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `protocolDetectionTimeout`: how long to wait for a client's first bytes before taking
    /// the connection as opaque TCP. `None`: the proxy's `--protocol-detection-timeout`.
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<Duration>,
    /// `accessLogFile`: whether the proxy writes its access log.
    #[serde(default)]
    pub access_log: AccessLogOutput,
    /// `trustDomain`: the trust domain of the mesh's SPIFFE identities
    /// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`); default
    /// [`DEFAULT_TRUST_DOMAIN`]. Checked to be a DNS name (lowercase labels, no trailing dot).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// `rootNamespace`: where mesh-wide policies live (a PeerAuthentication without a selector
    /// there applies to every namespace; a DestinationRule there applies to hosts whose own
    /// namespaces have none); default [`DEFAULT_ROOT_NAMESPACE`].
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// `extensionProviders`: the external authorizers CUSTOM policies name, each checked, the
    /// rejected ones kept with why (see [`crate::ext_authz`]).
    #[serde(
        default,
        skip_serializing_if = "crate::ext_authz::ExtensionProviders::is_empty"
    )]
    pub extension_providers: crate::ext_authz::ExtensionProviders,
    /// `pathNormalization.normalization`: what is done to request paths before authorization
    /// and routing; default `BASE`.
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// `defaultConfig.gatewayTopology.numTrustedProxies`: how many `X-Forwarded-For` hops a
    /// gateway trusts when it works out the client's address; 0 by default.
    #[serde(default)]
    pub num_trusted_proxies: TrustedProxies,
    /// `ingressClass`: the Ingress class the mesh serves; `istio` by default.
    #[serde(default = "default_ingress_class")]
    pub ingress_class: String,
    /// `ingressSelector`: the `istio` label value of the gateway pods that serve Ingresses;
    /// `ingressgateway` by default.
    #[serde(default = "default_ingress_selector")]
    pub ingress_selector: String,
    /// Tracing: the `zipkin`/`opentelemetry` providers `defaultProviders.tracing` names and
    /// `defaultConfig.tracing.sampling` (see [`crate::trace_config`]).
    #[serde(default)]
    pub tracing: crate::trace_config::TracingSettings,
}

fn default_ingress_class() -> String {
    "istio".to_owned()
}

fn default_ingress_selector() -> String {
    "ingressgateway".to_owned()
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            protocol_detection_timeout: None,
            access_log: AccessLogOutput::default(),
            trust_domain: default_trust_domain(),
            root_namespace: default_root_namespace(),
            extension_providers: crate::ext_authz::ExtensionProviders::default(),
            path_normalization: PathNormalization::default(),
            num_trusted_proxies: TrustedProxies::default(),
            ingress_class: default_ingress_class(),
            ingress_selector: default_ingress_selector(),
            tracing: crate::trace_config::TracingSettings::default(),
        }
    }
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

fn default_root_namespace() -> String {
    DEFAULT_ROOT_NAMESPACE.to_owned()
}

impl MeshSettings {
    /// The SPIFFE URI of a workload running as `service_account` in `namespace`:
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, Istio's identity format
    /// (what `source_principal` reports, without the scheme).
    #[must_use]
    pub fn workload_identity(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// Whether access-log lines are written at all.
    #[must_use]
    pub fn access_log_on(&self) -> bool {
        self.access_log != AccessLogOutput::Off
    }
}

/// Where access-log lines go (`accessLogFile`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogOutput {
    /// The proxy's stdout: `/dev/stdout`, and shunt's default when `accessLogFile` is unset.
    #[default]
    Stdout,
    /// `accessLogFile: ""`: no access log (metrics are unaffected).
    Off,
}

mod opt_millis {
    //! `Option<Duration>` as whole milliseconds on the control wire.
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// `gatewayTopology.numTrustedProxies` as applied (MeshConfig's or a gateway pod's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TrustedProxies {
    /// How many `X-Forwarded-For` hops are trusted.
    Hops(u32),
    /// The value was invalid (reported where it was loaded): the client's address cannot be
    /// known, so remote-IP conditions fail closed rather than read the load balancer's.
    Invalid,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::Hops(0)
    }
}

impl TrustedProxies {
    /// The most hops shunt accepts; more is surely a mistake.
    pub const MAX: u32 = 64;

    /// `numTrustedProxies` as written (any YAML/JSON value): `Err` says what is wrong, and
    /// the caller applies [`Self::Invalid`].
    pub fn parse(value: &serde_json::Value) -> Result<u32, String> {
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= Self::MAX)
            .ok_or_else(|| {
                format!(
                    "expected a number of hops 0-{}, got {value}: until it is fixed the \
                     client address is unknown and remote-IP conditions fail closed",
                    Self::MAX
                )
            })
    }
}
