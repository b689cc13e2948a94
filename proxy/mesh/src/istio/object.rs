//! What every config object has: `metadata`, and `spec` around a kind's own type.

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

/// YAML writes an empty section (`http:`) as null; Istio reads it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
