//! The Kubernetes objects shunt reads, in the checked form the agent works with.
//!
//! Pods, Services and Namespaces are read as k8s-openapi's types, in local mode and from the
//! API server alike, and checked into these by the agent (`shunt_agent::config::kinds`), so a
//! bad value fails with its exact path (`spec.ports[1].port: expected an integer 1-65535, got
//! 70000`). These hold only what shunt uses, already checked (ports, names, addresses), with
//! Kubernetes' defaults applied. Each serializes back in Kubernetes' own shape, which is what
//! `GET /config` and `shuntctl config dump` show, and reads that back with the same checks.
//! Secrets are read here directly: their values are key material and never kept as text.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use shunt_mesh::ids::PodUid;

/// The namespace of a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The service account of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The agent's `--node-name` when none is given. A pod without `spec.nodeName` belongs to the
/// agent's node, so a single-node config needs no node names at all.
pub const DEFAULT_NODE_NAME: &str = "local";
/// `type` of a Secret that names none.
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// `type` of a TLS Secret: `tls.crt` and `tls.key` are required.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// Always set on Pods and Services once parsed (defaulted to `default`); unused on
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectMeta {
    /// The object's namespace, `default` when it names none.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

/// `v1/Namespace`: only its labels matter (capture opt-in and opt-out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

/// `v1/Pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: PodStatus,
}

impl Pod {
    /// `metadata.uid`, or `namespace/name` when the config gives none: how the agent and the
    /// proxy name the pod.
    #[must_use]
    pub fn uid(&self) -> PodUid {
        PodUid::new(
            self.metadata
                .uid
                .clone()
                .unwrap_or_else(|| format!("{}/{}", self.metadata.namespace(), self.metadata.name)),
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub host_network: bool,
    /// `spec.nodeName`: the node the pod runs on; `None` (or `""`) means the reading agent's.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_name: Option<NodeName>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<Container>,
}

/// A node's name, as Kubernetes requires it: a DNS subdomain (at most 253 characters; dot
/// separated labels of lowercase letters, digits and dashes, each starting and ending with a
/// letter or digit).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl NodeName {
    const EXPECTED: &str = "a node name (a DNS subdomain: at most 253 lowercase letters, \
         digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)";

    /// Checks `name`; the error says what a node name must be.
    pub fn new(name: &str) -> Result<Self, String> {
        if Self::is_valid(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!("expected {}, got {name:?}", Self::EXPECTED))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(name: &str) -> bool {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        name.len() <= 253 && name.split('.').all(label_ok)
    }
}

/// [`DEFAULT_NODE_NAME`]: the agent's node when `--node-name` is not given.
impl Default for NodeName {
    fn default() -> Self {
        Self(DEFAULT_NODE_NAME.to_owned())
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.as_str() {
            Some(name) if Self::is_valid(name) => Ok(Self(name.to_owned())),
            _ => Err(expected(Self::EXPECTED, &value)),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<PortName>,
    pub container_port: Port,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<PodIp>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub conditions: Vec<PodCondition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "Unknown" => Self::Unknown,
            _ => {
                return Err(format!(
                    "expected one of Pending, Running, Succeeded, Failed, Unknown, got {text:?}"
                ));
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// `v1/Service`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: ClusterIp,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<ServicePort>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: Port,
    /// Kubernetes defaults it to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// `v1/Secret`. Its values are key material: they are never serialized (so neither
/// `GET /config` nor a log carries them) and `Debug` shows only the keys.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SecretFields")]
pub struct Secret {
    pub metadata: ObjectMeta,
    /// `type`; [`SECRET_TYPE_OPAQUE`] when absent.
    pub kind: String,
    /// `data`, decoded from base64, with `stringData` merged over it as the API server does
    /// when the Secret is written (a key in both takes the `stringData` value).
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Secret {
    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// The keys a Secret of type `kind` must have (Kubernetes refuses one without them): a
    /// [`SECRET_TYPE_TLS`] Secret needs `tls.crt` and `tls.key`.
    #[must_use]
    pub fn required_keys(kind: &str) -> &'static [&'static str] {
        match kind {
            SECRET_TYPE_TLS => &["tls.crt", "tls.key"],
            _ => &[],
        }
    }

    /// The keys its type requires ([`Secret::required_keys`]) that it lacks.
    #[must_use]
    pub fn missing_keys(&self) -> Vec<&'static str> {
        Self::required_keys(&self.kind)
            .iter()
            .copied()
            .filter(|key| !self.data.contains_key(*key))
            .collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(key, value)| (key.as_str(), format!("<{} bytes>", value.len())))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("kind", &self.kind)
            .field("data", &keys)
            .finish()
    }
}

/// A Secret as written; [`Secret`] is what it means.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretFields {
    metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    data: BTreeMap<SecretKey, SecretBytes>,
    #[serde(default, deserialize_with = "null_as_default")]
    string_data: BTreeMap<SecretKey, String>,
}

impl From<SecretFields> for Secret {
    fn from(fields: SecretFields) -> Self {
        let mut data: BTreeMap<String, Vec<u8>> = fields
            .data
            .into_iter()
            .map(|(key, value)| (key.0, value.0))
            .collect();
        data.extend(
            fields
                .string_data
                .into_iter()
                .map(|(key, value)| (key.0, value.into_bytes())),
        );
        Self {
            metadata: fields.metadata,
            kind: fields
                .kind
                .filter(|kind| !kind.is_empty())
                .unwrap_or_else(|| SECRET_TYPE_OPAQUE.to_owned()),
            data,
        }
    }
}

/// A key of a Secret's `data` or `stringData`: at most 253 letters, digits, `-`, `_` and `.`,
/// and not `.` or `..`, as Kubernetes requires.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct SecretKey(String);

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        let valid = (1..=253).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && key != "."
            && key != "..";
        if valid {
            Ok(Self(key))
        } else {
            Err(de::Error::custom(format_args!(
                "expected a Secret key (at most 253 letters, digits, '-', '_' and '.'), got \
                 {key:?}"
            )))
        }
    }
}

/// A `data` value: base64 as Kubernetes writes it (the standard alphabet, padded; line breaks
/// are ignored, as the API server ignores them).
struct SecretBytes(Vec<u8>);

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        let Some(text) = value.as_str() else {
            // A value that is not a string is not key material: it may be shown.
            return Err(expected("a base64 string", &value));
        };
        let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        // The value is not echoed: it may be key material that merely lacks its encoding.
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Self)
            .map_err(|e| {
                de::Error::custom(format_args!(
                    "expected base64 (the standard alphabet, padded; stringData takes plain \
                     text): {e}"
                ))
            })
    }
}

/// A port number, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

impl Port {
    const EXPECTED: &str = "an integer 1-65535";

    /// Checks `number`; the error says what a port must be. Kubernetes' own types read a
    /// missing port as 0, so 0 is named as possibly missing.
    pub fn new(number: i32) -> Result<Self, String> {
        match u16::try_from(number) {
            Ok(0) => Err(format!(
                "required field is missing (or 0): expected {}",
                Self::EXPECTED
            )),
            Ok(port) => Ok(Self(port)),
            Err(_) => Err(format!("expected {}, got {number}", Self::EXPECTED)),
        }
    }

    fn from_json(value: &serde_json::Value) -> Option<Self> {
        value
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n != 0)
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json(&value).ok_or_else(|| expected(Self::EXPECTED, &value))
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A port name: what Kubernetes calls an `IANA_SVC_NAME` (at most 15 lowercase letters, digits
/// and dashes, with at least one letter, no dash at either end and no double dash).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PortName(pub String);

impl PortName {
    const EXPECTED: &str =
        "a port name (at most 15 lowercase letters, digits and dashes, with a letter)";

    /// Checks `name`; the error says what a port name must be.
    pub fn new(name: &str) -> Result<Self, String> {
        if Self::is_valid(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!("expected {}, got {name:?}", Self::EXPECTED))
        }
    }

    fn is_valid(name: &str) -> bool {
        (1..=15).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.bytes().any(|b| b.is_ascii_lowercase())
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--")
    }
}

impl<'de> Deserialize<'de> for PortName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.as_str() {
            Some(name) if Self::is_valid(name) => Ok(Self(name.to_owned())),
            _ => Err(expected(Self::EXPECTED, &value)),
        }
    }
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(Port),
    Name(PortName),
}

impl TargetPort {
    const EXPECTED: &str = "an integer 1-65535 or a container port name";

    /// A number or a name, as Kubernetes' `IntOrString` holds it.
    pub fn from_number(number: i32) -> Result<Self, String> {
        Port::new(number)
            .map(Self::Number)
            .map_err(|_| format!("expected {}, got {number}", Self::EXPECTED))
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        PortName::new(name)
            .map(Self::Name)
            .map_err(|_| format!("expected {}, got {name:?}", Self::EXPECTED))
    }
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if let Some(port) = Port::from_json(&value) {
            return Ok(Self::Number(port));
        }
        match value.as_str() {
            Some(name) if PortName::is_valid(name) => Ok(Self::Name(PortName(name.to_owned()))),
            _ => Err(expected(Self::EXPECTED, &value)),
        }
    }
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(port) => port.serialize(serializer),
            Self::Name(name) => name.serialize(serializer),
        }
    }
}

/// A port's protocol; Kubernetes' default is TCP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    const EXPECTED: &str = "one of TCP, UDP, SCTP";

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(format!("expected {}, got {text:?}", Self::EXPECTED)),
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.as_str() {
            Some(text) => Self::parse(text).map_err(de::Error::custom),
            None => Err(expected(Self::EXPECTED, &value)),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `status.podIP`. IPv4 only for now: the capture programs are IPv4 (connect6 is designed in,
/// not built).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PodIp(pub Ipv4Addr);

impl PodIp {
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map(Self)
            .map_err(|_| format!("expected an IPv4 address, got {text:?}"))
    }
}

impl<'de> Deserialize<'de> for PodIp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        value
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Self)
            .ok_or_else(|| expected("an IPv4 address", &value))
    }
}

/// `spec.clusterIP`: an IPv4 address, or none (`""`, `None` for a headless Service, or absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterIp(pub Option<Ipv4Addr>);

impl ClusterIp {
    const EXPECTED: &str = "an IPv4 address or \"None\"";

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "" | "None" => Ok(Self(None)),
            ip => ip
                .parse()
                .map(|ip| Self(Some(ip)))
                .map_err(|_| format!("expected {}, got {text:?}", Self::EXPECTED)),
        }
    }
}

impl<'de> Deserialize<'de> for ClusterIp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match value.as_str() {
            Some(text) => Self::parse(text).map_err(de::Error::custom),
            None if value.is_null() => Ok(Self(None)),
            None => Err(expected(Self::EXPECTED, &value)),
        }
    }
}

impl Serialize for ClusterIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(ip) => serializer.collect_str(&ip),
            None => serializer.serialize_str("None"),
        }
    }
}

/// `expected <what>, got <value as JSON>`: the one shape of every value error.
fn expected<E: de::Error>(what: &str, got: &serde_json::Value) -> E {
    E::custom(format_args!("expected {what}, got {}", Shown(got)))
}

/// A bad value as the operator wrote it (JSON spelling: strings quoted, `null` for nothing).
struct Shown<'a>(&'a serde_json::Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            serde_json::Value::Null => f.write_str("nothing"),
            other => write!(f, "{other}"),
        }
    }
}

/// `""` and null read as absent, as Kubernetes reads an empty optional string.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.is_empty() => Ok(None),
        other => T::deserialize(other).map(Some).map_err(de::Error::custom),
    }
}

/// YAML writes an empty section (`labels:`) as null; Kubernetes reads it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
