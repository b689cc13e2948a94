//! Istio's security API as shunt reads it: `security.istio.io` `PeerAuthentication` (v1 and
//! v1beta1, one shape; `AuthorizationPolicy` is in `authz.rs`), and [`FailClosed`]: what the
//! agent's rejected security settings asked to secure, so that a broken object makes things
//! stricter, never looser.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::object::{DEFAULT_NAMESPACE, Metadata};

/// The API versions of `security.istio.io` shunt reads; both share one schema.
pub const SECURITY_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// The annotation that turns an AuthorizationPolicy into a shadow (`"true"`): it only reports.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Go's `strconv.ParseBool`, which Istio reads [`DRY_RUN_ANNOTATION`] with: `1`, `t`, `T`,
/// `TRUE`, `true`, `True` and their false twins; anything else is `None`.
#[must_use]
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `PeerAuthentication.spec`: which inbound connections a workload accepts, by mTLS mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// `selector`: the workloads (pods of the policy's namespace) it applies to; absent or with
    /// no `matchLabels`: the whole namespace, or the whole mesh in the root namespace.
    pub selector: Option<WorkloadSelector>,
    /// `mtls`: the mode for every port; absent: `UNSET` (inherited).
    pub mtls: Option<PeerMutualTls>,
    /// `portLevelMtls`: modes per workload port (the container port, not the Service port),
    /// keyed by the port number written as a string (YAML's `8080:` arrives as `"8080"`).
    /// Only for a policy with a selector.
    pub port_level_mtls: BTreeMap<String, PeerMutualTls>,
}

/// `selector` of a PeerAuthentication: Istio's `WorkloadSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// `matchLabels`: a pod must carry all of them.
    pub match_labels: BTreeMap<String, String>,
}

/// `mtls` / `portLevelMtls[port]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase")]
pub struct PeerMutualTls {
    /// `UNSET` (or absent: inherit), `DISABLE`, `PERMISSIVE` or `STRICT`; checked when compiled.
    pub mode: Option<String>,
}

/// What the config's rejected security settings asked to secure (shunt's own, not an Istio
/// kind). The agent rejects a broken object whole, as for every kind; for the security
/// settings that alone would fail *open* (the pods fall back to a weaker mode, the bytes go
/// out in plaintext), so what the object covered is kept here and locked down until it is
/// fixed. Derived from the object as written ([`Self::add_rejected`]), so it works for an
/// object that does not even parse.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FailClosed {
    /// Rejected PeerAuthentications that asked for `STRICT`.
    pub peer_authentications: Vec<RejectedPeerAuthentication>,
    /// Rejected DestinationRules that asked for TLS.
    pub destination_rules: Vec<RejectedDestinationRule>,
    /// Rejected AuthorizationPolicies that could deny (all but AUDIT and dry runs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<RejectedAuthorizationPolicy>,
}

/// A rejected PeerAuthentication that asked for `STRICT` somewhere (or whose modes cannot be
/// read). It takes the policy's place in the merge (its namespace, scope and
/// creationTimestamp) as `STRICT` on every port: where the policy would have won, mTLS is
/// required; where another policy would have won anyway, that one still does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedPeerAuthentication {
    /// The rejected object's `metadata` (name, namespace, creationTimestamp).
    pub metadata: Metadata,
    /// Its scope, as far as it can be read.
    pub selector: RejectedSelector,
}

/// The `selector` of a rejected PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum RejectedSelector {
    /// No selector (or no `matchLabels`): the namespace, or the mesh in the root namespace.
    None,
    /// `matchLabels` as written.
    Labels(BTreeMap<String, String>),
    /// A selector that cannot be read: every workload of the namespace, at workload scope
    /// (the pods it meant are among them). Ignored in the root namespace, as a selector
    /// there always is.
    Unreadable,
}

/// A rejected AuthorizationPolicy that could deny requests (its action is not plainly `AUDIT`
/// and it is not plainly a dry run). Leaving it out would open what it guarded (a DENY no
/// longer denies; an ALLOW gone may leave no ALLOW at all, which allows everything), so it
/// stands in as a policy that denies everything to the workloads it selects, until it is
/// fixed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedAuthorizationPolicy {
    /// The rejected object's `metadata`.
    pub metadata: Metadata,
    /// Its scope, as far as it can be read. [`RejectedSelector::Unreadable`] (also for a
    /// policy attached by `targetRef(s)`) stands for every workload of the namespace, or of
    /// the mesh in the root namespace, where a selector reaches every namespace.
    pub selector: RejectedSelector,
}

/// A rejected DestinationRule that asked for TLS somewhere (a `tls` whose mode is not plainly
/// `DISABLE`). It takes the rule's place in the DestinationRule lookup (its namespace, host,
/// `exportTo` and creationTimestamp), and every cluster under it refuses connections rather
/// than send the app's bytes in plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedDestinationRule {
    /// The rejected object's `metadata`.
    pub metadata: Metadata,
    /// `spec.host` as written.
    pub host: String,
    /// `spec.exportTo` as written; `None` when it cannot be read, which exports it to every
    /// namespace (whoever it may have applied to is refused).
    pub export_to: Option<Vec<String>>,
}

impl FailClosed {
    /// Whether nothing is locked down.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.peer_authentications.is_empty()
            && self.destination_rules.is_empty()
            && self.authorization_policies.is_empty()
    }

    /// Records what the rejected object `raw` (an Istio object as written: `kind`,
    /// `metadata`, `spec`) asked to secure, if anything; returns what it added, for the
    /// agent's error message. `metadata` must already carry a string `name` (the loader
    /// checks it); `namespace` defaults as for every object.
    pub fn add_rejected(&mut self, raw: &serde_json::Value) -> Option<FailClosedEffect> {
        let metadata = raw_metadata(raw)?;
        let spec = &raw["spec"];
        match raw["kind"].as_str()? {
            "PeerAuthentication" if asks_for_strict(spec) => {
                let selector = raw_selector(spec.get("selector"));
                self.peer_authentications
                    .push(RejectedPeerAuthentication { metadata, selector });
                Some(FailClosedEffect::StrictMtls)
            }
            "AuthorizationPolicy" if may_deny(raw) => {
                let attached = ["targetRef", "targetRefs"]
                    .iter()
                    .any(|field| spec.get(field).is_some_and(|v| !v.is_null()));
                let selector = if attached {
                    RejectedSelector::Unreadable
                } else {
                    rejected_selector(spec)
                };
                self.authorization_policies
                    .push(RejectedAuthorizationPolicy { metadata, selector });
                Some(FailClosedEffect::DenyAll)
            }
            "DestinationRule" if asks_for_tls(spec) => {
                let host = spec["host"].as_str().filter(|h| !h.is_empty())?.to_owned();
                let export_to = match spec.get("exportTo") {
                    None | Some(serde_json::Value::Null) => Some(Vec::new()),
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>(),
                    Some(_) => None,
                };
                self.destination_rules.push(RejectedDestinationRule {
                    metadata,
                    host,
                    export_to,
                });
                Some(FailClosedEffect::RefuseConnections)
            }
            _ => None,
        }
    }
}

/// `selector` of a rejected policy as written.
fn rejected_selector(spec: &serde_json::Value) -> RejectedSelector {
    raw_selector(spec.get("selector"))
}

/// Whether an AuthorizationPolicy as written may deny requests: anything but a plain `AUDIT`
/// action or a plain dry run (an unreadable action or annotation may mean an enforced DENY).
fn may_deny(raw: &serde_json::Value) -> bool {
    let audit = raw["spec"]["action"].as_str() == Some("AUDIT");
    let dry_run = raw["metadata"]["annotations"][DRY_RUN_ANNOTATION]
        .as_str()
        .and_then(parse_go_bool)
        == Some(true);
    !(audit || dry_run)
}

/// What [`FailClosed::add_rejected`] locked down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailClosedEffect {
    /// The PeerAuthentication's scope requires mTLS on every port.
    StrictMtls,
    /// Connections to the DestinationRule's host, from where it applies, are refused.
    RefuseConnections,
    /// The AuthorizationPolicy's workloads deny every request and connection.
    DenyAll,
}

impl std::fmt::Display for FailClosedEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StrictMtls => {
                "left out, but it asks for STRICT: until it is fixed, the workloads it covers \
                 require mTLS on every port (failing closed)"
            }
            Self::RefuseConnections => {
                "left out, but it asks for TLS: until it is fixed, connections to its host that \
                 it would govern are refused rather than sent in plaintext (failing closed)"
            }
            Self::DenyAll => {
                "left out, but it could deny requests: until it is fixed, the workloads it \
                 selects deny every request and connection (failing closed)"
            }
        })
    }
}

/// The `selector` of a rejected policy as written (`spec.selector`): a misspelt `matchLabels`
/// must not widen the scope to the namespace, so anything but `matchLabels` is unreadable.
pub(super) fn raw_selector(selector: Option<&serde_json::Value>) -> RejectedSelector {
    match selector {
        None | Some(serde_json::Value::Null) => RejectedSelector::None,
        Some(serde_json::Value::Object(fields)) if fields.keys().all(|k| k == "matchLabels") => {
            match fields.get("matchLabels") {
                None | Some(serde_json::Value::Null) => RejectedSelector::None,
                Some(labels) => string_map(labels).map_or(RejectedSelector::Unreadable, |labels| {
                    if labels.is_empty() {
                        RejectedSelector::None
                    } else {
                        RejectedSelector::Labels(labels)
                    }
                }),
            }
        }
        Some(_) => RejectedSelector::Unreadable,
    }
}

/// `name`, `namespace` (default when absent) and `creationTimestamp` (when a string).
pub(super) fn raw_metadata(raw: &serde_json::Value) -> Option<Metadata> {
    let meta = &raw["metadata"];
    Some(Metadata {
        name: meta["name"].as_str()?.to_owned(),
        namespace: meta["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned(),
        creation_timestamp: meta["creationTimestamp"].as_str().map(str::to_owned),
    })
}

fn string_map(value: &serde_json::Value) -> Option<BTreeMap<String, String>> {
    value
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Whether a PeerAuthentication `spec` as written may mean `STRICT` anywhere: `STRICT` (in any
/// case) anywhere in it, even under a misspelt field, or a mode (or an `mtls`/`portLevelMtls`
/// shape) that is not plainly one of `UNSET`, `DISABLE` and `PERMISSIVE`.
fn asks_for_strict(spec: &serde_json::Value) -> bool {
    let weak = |mtls: &serde_json::Value| match mtls {
        serde_json::Value::Null => true,
        serde_json::Value::Object(fields) => fields.iter().all(|(key, value)| {
            key == "mode"
                && (value.is_null()
                    || matches!(value.as_str(), Some("UNSET" | "DISABLE" | "PERMISSIVE")))
        }),
        _ => false,
    };
    if mentions(spec, &|_, value| {
        value
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("STRICT"))
    }) {
        return true;
    }
    match spec {
        serde_json::Value::Null => false,
        serde_json::Value::Object(fields) => {
            let ports_weak = match fields.get("portLevelMtls") {
                None | Some(serde_json::Value::Null) => true,
                Some(serde_json::Value::Object(ports)) => ports.values().all(weak),
                Some(_) => false,
            };
            !(fields.get("mtls").is_none_or(weak) && ports_weak)
        }
        _ => true,
    }
}

/// The fields of Istio's `ClientTLSSettings`.
const CLIENT_TLS_FIELDS: [&str; 9] = [
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
    "caCrl",
];

/// Whether a DestinationRule `spec` as written may mean TLS anywhere: a `tls` (in any case)
/// that is not an object or has a field `ClientTLSSettings` does not have (a misspelt `mode`
/// must not read as `DISABLE`), or a `mode` (in any case, anywhere) other than `DISABLE`
/// (absent is `DISABLE`, Istio's default).
fn asks_for_tls(spec: &serde_json::Value) -> bool {
    mentions(spec, &|key, value| {
        if key.eq_ignore_ascii_case("mode") {
            !value.is_null() && value.as_str() != Some("DISABLE")
        } else if key.eq_ignore_ascii_case("tls") {
            match value {
                serde_json::Value::Null => false,
                serde_json::Value::Object(tls) => tls
                    .keys()
                    .any(|field| !CLIENT_TLS_FIELDS.contains(&field.as_str())),
                _ => true,
            }
        } else {
            false
        }
    })
}

/// Whether `found(key, value)` holds for some entry of an object anywhere in `value` (or, with
/// key `""`, for some value anywhere).
fn mentions(value: &serde_json::Value, found: &dyn Fn(&str, &serde_json::Value) -> bool) -> bool {
    match value {
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, v)| found(key, v) || mentions(v, found)),
        serde_json::Value::Array(items) => items.iter().any(|v| found("", v) || mentions(v, found)),
        other => found("", other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(namespace: &str, name: &str) -> Metadata {
        Metadata {
            name: name.into(),
            namespace: namespace.into(),
            creation_timestamp: None,
        }
    }

    #[test]
    fn rejected_peer_authentications_that_may_mean_strict_fail_closed() {
        let pa = |spec: serde_json::Value| json!({"kind": "PeerAuthentication", "metadata": {"name": "p", "namespace": "shop"}, "spec": spec});
        let strict = |selector| {
            Some(RejectedPeerAuthentication {
                metadata: meta("shop", "p"),
                selector,
            })
        };
        let cases = [
            (
                pa(json!({"mtls": {"mode": "STRICT"}, "bogus": 1})),
                strict(RejectedSelector::None),
            ),
            (
                pa(json!({"mtls": {"mode": "STRICT"}, "selector": {}})),
                strict(RejectedSelector::None),
            ),
            (
                pa(json!({"mtls": {"mode": "STRICT"}, "selector": {"matchLabels": {}}})),
                strict(RejectedSelector::None),
            ),
            (
                pa(
                    json!({"selector": {"matchLabels": {"app": "cart"}}, "portLevelMtls": {"x": {"mode": "STRICT"}}}),
                ),
                strict(RejectedSelector::Labels(BTreeMap::from([(
                    "app".into(),
                    "cart".into(),
                )]))),
            ),
            (
                pa(json!({"selector": {"matchLabels": {"app": 5}}, "mtls": {"mode": "STRICT"}})),
                strict(RejectedSelector::Unreadable),
            ),
            (
                pa(
                    json!({"selector": {"matchLabel": {"app": "cart"}}, "mtls": {"mode": "STRICT"}}),
                ),
                strict(RejectedSelector::Unreadable),
            ),
            (
                pa(json!({"selector": "app=cart", "mtls": {"mode": "STRICT"}})),
                strict(RejectedSelector::Unreadable),
            ),
            // Modes that cannot be read may mean STRICT.
            (
                pa(json!({"mtls": {"mode": "STRIKT"}})),
                strict(RejectedSelector::None),
            ),
            (
                pa(json!({"mtls": {"mdoe": "DISABLE"}})),
                strict(RejectedSelector::None),
            ),
            (
                pa(json!({"mtls": "STRICT"})),
                strict(RejectedSelector::None),
            ),
            (
                pa(json!({"portLevelMtls": [{"mode": "DISABLE"}]})),
                strict(RejectedSelector::None),
            ),
            (pa(json!("STRICT")), strict(RejectedSelector::None)),
            // Nothing strict: leaving the object out weakens nothing.
            (
                pa(json!({"portLevelMTLS": {"80": {"mode": "strict"}}})),
                strict(RejectedSelector::None),
            ),
            (
                pa(
                    json!({"mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"80": {"mode": "DISABLE"}}}),
                ),
                None,
            ),
            (pa(json!({"mtls": {"mode": "UNSET"}, "bogus": true})), None),
            (pa(json!({"mtls": {}})), None),
            (pa(json!(null)), None),
        ];
        for (raw, expected) in cases {
            let mut fail_closed = FailClosed::default();
            let effect = fail_closed.add_rejected(&raw);
            assert_eq!(
                fail_closed.peer_authentications.first(),
                expected.as_ref(),
                "{raw}"
            );
            assert_eq!(effect.is_some(), expected.is_some(), "{raw}");
            assert!(fail_closed.destination_rules.is_empty());
        }
    }

    #[test]
    fn rejected_destination_rules_that_may_mean_tls_fail_closed() {
        let dr = |spec: serde_json::Value| json!({"kind": "DestinationRule", "metadata": {"name": "d", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": spec});
        let refused = |export_to: Option<Vec<&str>>| {
            Some(RejectedDestinationRule {
                metadata: Metadata {
                    creation_timestamp: Some("2024-01-01T00:00:00Z".into()),
                    ..meta("shop", "d")
                },
                host: "cart".into(),
                export_to: export_to.map(|l| l.into_iter().map(str::to_owned).collect()),
            })
        };
        let cases = [
            (
                dr(json!({"host": "cart", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}})),
                refused(Some(vec![])),
            ),
            (
                dr(
                    json!({"host": "cart", "exportTo": ["."], "subsets": [{"name": "v1", "trafficPolicy": {"portLevelSettings": [{"tls": {"mode": "SIMPLE"}}]}}]}),
                ),
                refused(Some(vec!["."])),
            ),
            (
                dr(
                    json!({"host": "cart", "exportTo": ".", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
                ),
                refused(None),
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"tls": {"mdoe": "DISABLE"}}})),
                refused(Some(vec![])),
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"tls": "SIMPLE"}})),
                refused(Some(vec![])),
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"tls": {"mode": 3}}})),
                refused(Some(vec![])),
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"TLS": {"mode": "SIMPLE"}}})),
                refused(Some(vec![])),
            ),
            // No TLS asked for: leaving the rule out sends nothing in plaintext that it would
            // have encrypted.
            (
                dr(
                    json!({"host": "cart", "trafficPolicy": {"tls": {"mode": "DISABLE", "sni": "x"}, "loadBalancer": {"simple": "X"}}}),
                ),
                None,
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"tls": {}}})),
                None,
            ),
            (
                dr(json!({"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "X"}}})),
                None,
            ),
            // Nowhere to put it.
            (
                dr(json!({"trafficPolicy": {"tls": {"mode": "SIMPLE"}}})),
                None,
            ),
        ];
        for (raw, expected) in cases {
            let mut fail_closed = FailClosed::default();
            fail_closed.add_rejected(&raw);
            assert_eq!(
                fail_closed.destination_rules.first(),
                expected.as_ref(),
                "{raw}"
            );
            assert!(fail_closed.peer_authentications.is_empty());
        }
    }

    #[test]
    fn rejected_authorization_policies_that_may_deny_fail_closed() {
        let ap = |annotations: serde_json::Value, spec: serde_json::Value| json!({"kind": "AuthorizationPolicy", "metadata": {"name": "a", "namespace": "shop", "annotations": annotations}, "spec": spec});
        let none = json!({});
        let labels = || RejectedSelector::Labels(BTreeMap::from([("app".into(), "cart".into())]));
        let cases = [
            // Every action that can deny, or that cannot be read.
            (
                ap(none.clone(), json!({"bogus": 1})),
                Some(RejectedSelector::None),
            ),
            (
                ap(
                    none.clone(),
                    json!({"action": "DENY", "selector": {"matchLabels": {"app": "cart"}}, "rules": "x"}),
                ),
                Some(labels()),
            ),
            (
                ap(none.clone(), json!({"action": "CUSTOM", "rules": [{}]})),
                Some(RejectedSelector::None),
            ),
            (
                ap(none.clone(), json!({"action": "ALOW"})),
                Some(RejectedSelector::None),
            ),
            (
                ap(none.clone(), json!({"action": 3})),
                Some(RejectedSelector::None),
            ),
            (
                ap(
                    none.clone(),
                    json!({"selector": {"matchLabel": {"app": "cart"}}}),
                ),
                Some(RejectedSelector::Unreadable),
            ),
            // Attached to something else: whatever it meant is locked down.
            (
                ap(
                    none.clone(),
                    json!({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}),
                ),
                Some(RejectedSelector::Unreadable),
            ),
            // A dry run that cannot be read is enforced, as Istio does.
            (
                ap(json!({"istio.io/dry-run": "yes"}), json!({"bogus": 1})),
                Some(RejectedSelector::None),
            ),
            (
                ap(json!({"istio.io/dry-run": true}), json!({"bogus": 1})),
                Some(RejectedSelector::None),
            ),
            // Never denies: leaving it out opens nothing.
            (
                ap(none.clone(), json!({"action": "AUDIT", "bogus": 1})),
                None,
            ),
            (
                ap(
                    json!({"istio.io/dry-run": "True"}),
                    json!({"action": "DENY", "bogus": 1}),
                ),
                None,
            ),
        ];
        for (raw, expected) in cases {
            let mut fail_closed = FailClosed::default();
            let effect = fail_closed.add_rejected(&raw);
            let got = fail_closed
                .authorization_policies
                .first()
                .map(|r| r.selector.clone());
            assert_eq!(got, expected, "{raw}");
            assert_eq!(effect, expected.map(|_| FailClosedEffect::DenyAll), "{raw}");
            if let Some(rejected) = fail_closed.authorization_policies.first() {
                assert_eq!(rejected.metadata, meta("shop", "a"));
            }
            assert!(fail_closed.peer_authentications.is_empty());
        }
    }

    #[test]
    fn go_bools_parse_as_strconv_does() {
        for (text, want) in [
            ("true", Some(true)),
            ("T", Some(true)),
            ("1", Some(true)),
            ("False", Some(false)),
            ("0", Some(false)),
            ("yes", None),
            ("tRuE", None),
            ("", None),
        ] {
            assert_eq!(parse_go_bool(text), want, "{text}");
        }
    }
}
