//! `security.istio.io` `AuthorizationPolicy` (v1 and v1beta1, one shape), with Istio's JSON
//! field names.
//!
//! As for every kind, these types check only the JSON shape; values (actions, IPs, ports, path
//! templates, `when` keys) are checked when `crate::security::authz` compiles them, so every
//! problem names its object and field. Unlike the networking kinds, a field shunt does not
//! read rejects the policy (the agent refuses it and the policy fails closed): a misspelt
//! `notPaths` would otherwise widen an ALLOW, or a misspelt `matchLabels` widen a selector.

use serde::{Deserialize, Serialize};

use super::object::{DEFAULT_NAMESPACE, Metadata};
use super::security::WorkloadSelector;

/// An `AuthorizationPolicy`: `metadata` (with the `istio.io/dry-run` annotation, which the
/// common [`Metadata`] does not carry) and `spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthorizationPolicy {
    /// The object's `metadata`.
    pub metadata: AuthzMetadata,
    /// The object's `spec`; absent or null reads as empty (`spec: {}`: an ALLOW that allows
    /// nothing).
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    /// `namespace/name`.
    #[must_use]
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

/// `metadata` of an AuthorizationPolicy: [`Metadata`]'s fields, and of its annotations only
/// `istio.io/dry-run` (the others are not shunt's business and are not kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuthzMetadata {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; [`DEFAULT_NAMESPACE`] when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `metadata.creationTimestamp` (RFC 3339), as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// `metadata.annotations`, the one shunt reads.
    #[serde(default, skip_serializing_if = "AuthzAnnotations::is_empty")]
    pub annotations: AuthzAnnotations,
}

impl AuthzMetadata {
    /// The common part, as every other kind has it.
    #[must_use]
    pub fn common(&self) -> Metadata {
        Metadata {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            creation_timestamp: self.creation_timestamp.clone(),
        }
    }
}

/// The annotations of an AuthorizationPolicy shunt reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthzAnnotations {
    /// `istio.io/dry-run`: `"true"` makes the policy a shadow that only reports what it would
    /// have done. Parsed as Go's `strconv.ParseBool` (as Istio does) when compiled.
    #[serde(
        rename = "istio.io/dry-run",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dry_run: Option<String>,
}

impl AuthzAnnotations {
    /// Whether none of them is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.dry_run.is_none()
    }
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// `selector`: the workloads it applies to (of its namespace; in the root namespace, of
    /// every namespace). Absent or without `matchLabels`: all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `action`: `ALLOW` (absent), `DENY`, `AUDIT` or `CUSTOM`; checked when compiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `provider`: the extension provider of a `CUSTOM` policy (MeshConfig
    /// `extensionProviders[].name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<AuthzProvider>,
    /// `rules`: the policy matches when any rule does; none: it never matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// `provider` of a `CUSTOM` policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzProvider {
    /// `name`: an `extensionProviders[].name` of MeshConfig.
    pub name: String,
}

/// One of `rules`: matches when one `from` entry, one `to` entry and every `when` match. An
/// absent section matches anything; an empty list (`from: []`) is invalid, as in Istio.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzRule {
    /// `from`: the sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<AuthzFrom>>,
    /// `to`: the operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<AuthzTo>>,
    /// `when`: extra conditions, all of which must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzCondition>,
}

/// One of `rules[].from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzFrom {
    /// `source` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<AuthzSource>,
}

/// One of `rules[].to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzTo {
    /// `operation` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<AuthzOperation>,
}

/// `source`: who sends. Fields are ANDed, the values of one field ORed; a `not…` field
/// matches when none of its values does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzSource {
    /// `principals`: the peer's identity without `spiffe://`
    /// (`cluster.local/ns/default/sa/sleep`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// `notPrincipals`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// `requestPrincipals`: `<iss>/<sub>` of a validated JWT.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// `notRequestPrincipals`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// `namespaces`: the peer identity's namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `notNamespaces`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// `serviceAccounts`: `<namespace>/<name>`, or `<name>` in the policy's namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// `notServiceAccounts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// `trustDomains`: the peer identity's trust domain (shunt's, beside Istio's fields).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// `notTrustDomains`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    /// `ipBlocks`: the direct peer's address, an IP or a CIDR.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// `notIpBlocks`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// `remoteIpBlocks`: the client's address from `X-Forwarded-For`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// `notRemoteIpBlocks`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `operation`: what is asked. Fields are ANDed, the values of one field ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzOperation {
    /// `hosts`: the `:authority`, case-insensitively.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// `notHosts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// `ports`: the destination workload's port, as strings (`"8080"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `notPorts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// `methods`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// `notMethods`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// `paths`: the normalized path without its query; `{*}`/`{**}` make a template.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// `notPaths`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// One of `rules[].when`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct AuthzCondition {
    /// `key`: an Istio attribute (`request.headers[x-user]`, `source.ip`, ...).
    pub key: String,
    /// `values`: one must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// `notValues`: none may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// YAML writes an empty section as null; Istio reads it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::istio::DRY_RUN_ANNOTATION;

    #[test]
    fn istio_json_reads_and_writes_back() {
        let written = json!({
            "metadata": {
                "name": "p",
                "namespace": "shop",
                "annotations": {"istio.io/dry-run": "true", "other": "x"},
            },
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "action": "DENY",
                "rules": [{
                    "from": [{"source": {"principals": ["a"], "notIpBlocks": ["10.0.0.0/8"]}}],
                    "to": [{"operation": {"methods": ["GET"], "notPaths": ["/x"]}}],
                    "when": [{"key": "request.headers[x-a]", "notValues": ["b"]}],
                }],
            },
        });
        let policy: AuthorizationPolicy = serde_json::from_value(written).unwrap();
        assert_eq!(policy.metadata.annotations.dry_run.as_deref(), Some("true"));
        assert_eq!(policy.spec.action.as_deref(), Some("DENY"));
        let rule = &policy.spec.rules[0];
        let source = rule.from.as_ref().unwrap()[0].source.as_ref().unwrap();
        assert_eq!(source.not_ip_blocks, ["10.0.0.0/8"]);
        assert_eq!(rule.when[0].not_values, ["b"]);
        // Round trip through the control wire keeps everything shunt reads.
        let again: AuthorizationPolicy =
            serde_json::from_value(serde_json::to_value(&policy).unwrap()).unwrap();
        assert_eq!(again, policy);
        assert_eq!(policy.qualified_name(), "shop/p");
        // The serde rename and the constant the fail-closed path reads agree.
        let annotations = serde_json::to_value(&policy.metadata.annotations).unwrap();
        assert_eq!(annotations[DRY_RUN_ANNOTATION], "true");
    }

    #[test]
    fn empty_and_null_spec_read_as_empty() {
        for spec in [json!(null), json!({})] {
            let policy: AuthorizationPolicy =
                serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
            assert_eq!(policy.spec, AuthorizationPolicySpec::default());
            assert_eq!(policy.metadata.namespace, "default");
        }
        // `from: []` is kept apart from an absent `from`: the compiler refuses it.
        let rule: AuthzRule = serde_json::from_value(json!({"from": []})).unwrap();
        assert_eq!(rule.from, Some(vec![]));
        assert_eq!(AuthzRule::default().from, None);
    }
}
