//! Istio's networking API (`networking.istio.io` v1, v1beta1 and v1alpha3, which share one
//! shape), its `PeerAuthentication` (`security.istio.io` v1 and v1beta1), shunt's
//! `shunt.io/v1alpha1 RateLimitPolicy` and the mesh settings of Istio's ConfigMap, as serde
//! types with Istio's JSON field names.
//!
//! These types check only the JSON shape (a string where a string belongs, ...); the values
//! (hosts, regexes, durations, weights, enums) are checked when `crate::routing` compiles
//! them, so that every problem is reported with the object and the field path together.
//! Unknown fields are ignored: real manifests carry fields shunt does not act on.
#![forbid(unsafe_code)]

mod decimal;
mod duration;
mod networking;
mod security;
mod shunt;

pub use decimal::Decimal;
pub use duration::{DurationError, parse_duration};
pub use networking::*;
pub use security::*;
pub use shunt::*;

use serde::{Deserialize, Deserializer, Serialize};

/// The namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata`, the parts routing uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; [`DEFAULT_NAMESPACE`] when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// RFC 3339; orders VirtualServices that share a host (absent sorts first, then by
    /// namespace/name), and PeerAuthentications of one scope (the oldest wins). Compared as
    /// written, which orders Kubernetes' own form (`2024-05-01T10:00:00Z`) correctly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// One config object: `metadata` and `spec` (the `apiVersion`/`kind` are implied by the type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Resource<S> {
    /// The object's `metadata`.
    pub metadata: Metadata,
    /// The object's `spec`; absent or null reads as `S::default()`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: S,
}

impl<S> Resource<S> {
    /// `namespace/name`.
    #[must_use]
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

/// `networking.istio.io` `VirtualService`.
pub type VirtualService = Resource<VirtualServiceSpec>;
/// `networking.istio.io` `DestinationRule`.
pub type DestinationRule = Resource<DestinationRuleSpec>;
/// `networking.istio.io` `ServiceEntry`.
pub type ServiceEntry = Resource<ServiceEntrySpec>;
/// `shunt.io/v1alpha1` `RateLimitPolicy`.
pub type RateLimitPolicy = Resource<RateLimitPolicySpec>;

/// The API versions of `networking.istio.io` shunt reads; all three share one schema.
pub const NETWORKING_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// `shunt.io/v1alpha1`, the API version of [`RateLimitPolicy`].
pub const SHUNT_API_VERSION: &str = "shunt.io/v1alpha1";

/// YAML writes an empty section (`http:`) as null; Istio reads it as empty.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
