//! One `AuthorizationPolicy`, checked and compiled into a [`Policy`]; and the stand-in of a
//! rejected one, which denies everything it selects.

use std::collections::BTreeMap;

use super::decision::{AuthzAction, AuthzScope, PolicySummary, RuleRef};
use super::matcher::{
    CompiledRule, Ctx, Field, Glob, HeaderKey, IpBlock, PathPattern, StrPattern, Test,
};
use crate::istio::{
    self, AuthorizationPolicy, AuthzCondition, AuthzOperation, AuthzSource,
    RejectedAuthorizationPolicy, RejectedSelector,
};
use crate::model::Workload;
use crate::routing::ObjectRef;

/// Problems found, by field path.
pub(super) type Problems = Vec<(String, String)>;

/// A compiled AuthorizationPolicy (or a rejected one's stand-in).
#[derive(Clone, Debug)]
pub(super) struct Policy {
    pub(super) object: ObjectRef,
    /// A stand-in's is `Deny`.
    pub(super) action: AuthzAction,
    pub(super) provider: Option<String>,
    pub(super) dry_run: bool,
    pub(super) scope: AuthzScope,
    namespace: String,
    /// The labels a workload must carry; empty: every workload in scope.
    labels: BTreeMap<String, String>,
    /// `spec.rules` as an HTTP request reads them, by index.
    rules: Vec<CompiledRule>,
    /// As a TCP connection reads them, with their `spec.rules` index: ALLOW rules with an
    /// HTTP-only field dropped; DENY, AUDIT and CUSTOM rules without their HTTP-only fields.
    tcp_rules: Vec<(usize, CompiledRule)>,
    pub(super) needs_http: bool,
    /// A rejected policy standing in: it matches everything, as a DENY.
    pub(super) fail_closed: bool,
}

impl Policy {
    pub(super) fn selects(&self, workload: &Workload) -> bool {
        let in_scope = matches!(self.scope, AuthzScope::Mesh | AuthzScope::MeshSelector)
            || self.namespace == workload.namespace;
        in_scope
            && self
                .labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
    }

    /// The first rule that matches: `Some(Some(index))`; a stand-in matches with no rule.
    pub(super) fn first_match(&self, ctx: &Ctx<'_>, tcp: bool) -> Option<Option<usize>> {
        if self.fail_closed {
            return Some(None);
        }
        // As the TCP rewriting: what cannot be known widens a DENY, and fails an ALLOW.
        let widen = self.action != AuthzAction::Allow;
        if tcp {
            self.tcp_rules
                .iter()
                .find(|(_, rule)| rule.matches(ctx, widen))
                .map(|(index, _)| Some(*index))
        } else {
            self.rules
                .iter()
                .position(|rule| rule.matches(ctx, widen))
                .map(Some)
        }
    }

    /// Whether it can deny or allow anything at all (a DENY or CUSTOM without rules cannot).
    pub(super) fn has_rules(&self) -> bool {
        self.fail_closed || !self.rules.is_empty()
    }

    pub(super) fn rule_ref(&self, rule: Option<usize>) -> RuleRef {
        RuleRef {
            policy: self.object.clone(),
            action: self.action,
            rule,
        }
    }

    pub(super) fn summary(&self) -> PolicySummary {
        PolicySummary {
            policy: self.object.clone(),
            action: self.action,
            scope: self.scope,
            dry_run: self.dry_run,
            fail_closed: self.fail_closed,
            provider: self.provider.clone(),
            rules: self.rules.len(),
            needs_http: self.needs_http,
        }
    }

    /// The order policies are listed and tried in: the root namespace's first (they reach
    /// every namespace), then by namespace and name.
    pub(super) fn order(&self, root: &str) -> (bool, &str, &str) {
        (
            *self.object.namespace != *root,
            &self.object.namespace,
            &self.object.name,
        )
    }
}

pub(super) const KIND: &str = "AuthorizationPolicy";

pub(super) fn object_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: KIND,
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn scope_of(has_selector: bool, namespace: &str, root: &str) -> AuthzScope {
    match (has_selector, namespace == root) {
        (false, true) => AuthzScope::Mesh,
        (true, true) => AuthzScope::MeshSelector,
        (false, false) => AuthzScope::Namespace,
        (true, false) => AuthzScope::Workload,
    }
}

/// A rejected policy in its place: every workload it selects (all of its namespace, or of the
/// mesh in the root namespace, when its selector cannot be read) denies everything.
pub(super) fn stand_in(rejected: &RejectedAuthorizationPolicy, root: &str) -> Policy {
    let labels = match &rejected.selector {
        RejectedSelector::Labels(labels) => labels.clone(),
        RejectedSelector::None | RejectedSelector::Unreadable => BTreeMap::new(),
    };
    let namespace = &rejected.metadata.namespace;
    Policy {
        object: object_ref(namespace, &rejected.metadata.name),
        action: AuthzAction::Deny,
        provider: None,
        dry_run: false,
        scope: scope_of(!labels.is_empty(), namespace, root),
        namespace: namespace.clone(),
        labels,
        rules: Vec::new(),
        tcp_rules: Vec::new(),
        needs_http: false,
        fail_closed: true,
    }
}

/// Checks and compiles one policy. `Err`: what makes it invalid (it is left out, and fails
/// closed); the second value: what is wrong but leaves it in (a dry-run annotation that is
/// not a boolean, which enforces it; rules that can never match).
pub(super) fn compile(
    written: &AuthorizationPolicy,
    root: &str,
) -> (Result<Policy, Problems>, Problems) {
    let mut problems = Problems::new();
    let mut warnings = Problems::new();
    let spec = &written.spec;
    let meta = &written.metadata;

    let dry_run = match meta.annotations.dry_run.as_deref() {
        None => false,
        Some(text) => istio::parse_go_bool(text).unwrap_or_else(|| {
            warnings.push((
                format!("metadata.annotations.{}", istio::DRY_RUN_ANNOTATION),
                format!(
                    "{text:?} is not a boolean (true, false, 1, 0, ...): the policy is enforced, \
                     not a dry run, as Istio does"
                ),
            ));
            false
        }),
    };

    let labels = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    for (key, value) in &labels {
        if key.is_empty() {
            problems.push((
                "spec.selector.matchLabels".to_owned(),
                "an empty label key".to_owned(),
            ));
        } else if key.contains('*') || value.contains('*') {
            problems.push((
                format!("spec.selector.matchLabels.{key}"),
                "wildcards are not supported in a selector (Istio rejects them): name the exact \
                 label value"
                    .to_owned(),
            ));
        }
    }

    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => AuthzAction::Allow,
        Some("DENY") => AuthzAction::Deny,
        Some("AUDIT") => AuthzAction::Audit,
        Some("CUSTOM") => AuthzAction::Custom,
        Some(other) => {
            problems.push((
                "spec.action".to_owned(),
                format!("unknown action {other:?}: expected ALLOW, DENY, AUDIT or CUSTOM"),
            ));
            AuthzAction::Allow
        }
    };
    let custom = action == AuthzAction::Custom;
    let provider = match (&spec.provider, custom) {
        (Some(_), false) => {
            problems.push((
                "spec.provider".to_owned(),
                format!(
                    "a provider is only for a CUSTOM policy, and this one's action is {action}: \
                     remove it, or set action: CUSTOM"
                ),
            ));
            None
        }
        (provider, true) => {
            let name = provider
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or_default();
            if name.is_empty() && !spec.rules.is_empty() {
                problems.push((
                    "spec.provider.name".to_owned(),
                    "a CUSTOM policy needs provider.name, one of MeshConfig's \
                     extensionProviders"
                        .to_owned(),
                ));
            }
            Some(name.to_owned())
        }
        (None, false) => None,
    };
    if spec.rules.is_empty() && action != AuthzAction::Allow {
        warnings.push((
            "spec.rules".to_owned(),
            format!(
                "a {action} policy without rules never matches, so it has no effect (Istio \
                 refuses it): add an empty rule `{{}}` to match every request"
            ),
        ));
    }

    let ctx = RuleCtx {
        namespace: &meta.namespace,
        custom,
    };
    let rules: Vec<CompiledRule> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| ctx.rule(&mut problems, &format!("spec.rules[{i}]"), rule))
        .collect();

    if !problems.is_empty() {
        return (Err(problems), warnings);
    }
    let tcp_rules = rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| match action {
            // An ALLOW rule that needs HTTP cannot match a TCP connection: the sidecar drops it.
            AuthzAction::Allow => (!rule.http_only()).then(|| (i, rule.clone())),
            // A DENY (AUDIT, CUSTOM) rule loses only what TCP lacks, so it widens.
            _ => Some((i, rule.without_http_fields())),
        })
        .collect();
    let needs_http = rules.iter().any(CompiledRule::http_only) || (custom && !rules.is_empty());
    let policy = Policy {
        object: object_ref(&meta.namespace, &meta.name),
        action,
        provider,
        dry_run,
        scope: scope_of(!labels.is_empty(), &meta.namespace, root),
        namespace: meta.namespace.clone(),
        labels,
        rules,
        tcp_rules,
        needs_http,
        fail_closed: false,
    };
    (Ok(policy), warnings)
}

/// What compiling a rule needs to know of its policy.
struct RuleCtx<'a> {
    /// For `serviceAccounts` written without a namespace.
    namespace: &'a str,
    /// CUSTOM policies may not name identities (Istio refuses them).
    custom: bool,
}

impl RuleCtx<'_> {
    fn rule(&self, problems: &mut Problems, at: &str, rule: &istio::AuthzRule) -> CompiledRule {
        let from = rule.from.as_ref().map(|entries| {
            if entries.is_empty() {
                problems.push((
                    format!("{at}.from"),
                    "must not be empty: leave `from` out to match any source".to_owned(),
                ));
            }
            entries
                .iter()
                .enumerate()
                .map(|(j, entry)| {
                    let at = format!("{at}.from[{j}].source");
                    match &entry.source {
                        Some(source) => self.source(problems, &at, source),
                        None => {
                            problems.push((at, "a from entry needs a source".to_owned()));
                            Vec::new()
                        }
                    }
                })
                .collect()
        });
        let to = rule.to.as_ref().map(|entries| {
            if entries.is_empty() {
                problems.push((
                    format!("{at}.to"),
                    "must not be empty: leave `to` out to match any operation".to_owned(),
                ));
            }
            entries
                .iter()
                .enumerate()
                .map(|(j, entry)| {
                    let at = format!("{at}.to[{j}].operation");
                    match &entry.operation {
                        Some(operation) => operation_fields(problems, &at, operation),
                        None => {
                            problems.push((at, "a to entry needs an operation".to_owned()));
                            Vec::new()
                        }
                    }
                })
                .collect()
        });
        let when = rule
            .when
            .iter()
            .enumerate()
            .flat_map(|(k, condition)| {
                self.condition(problems, &format!("{at}.when[{k}]"), condition)
            })
            .collect();
        CompiledRule { from, to, when }
    }

    fn source(&self, problems: &mut Problems, at: &str, source: &AuthzSource) -> Vec<Field> {
        let mut fields = Vec::new();
        let mut add = |field: Option<Field>| fields.extend(field);
        let strs = |v: &str| Ok(StrPattern::parse(v));
        let identity = [
            ("principals", &source.principals),
            ("notPrincipals", &source.not_principals),
            ("namespaces", &source.namespaces),
            ("notNamespaces", &source.not_namespaces),
            ("serviceAccounts", &source.service_accounts),
            ("notServiceAccounts", &source.not_service_accounts),
            ("trustDomains", &source.trust_domains),
            ("notTrustDomains", &source.not_trust_domains),
            ("requestPrincipals", &source.request_principals),
            ("notRequestPrincipals", &source.not_request_principals),
        ];
        if self.custom {
            for (name, values) in &identity {
                if !values.is_empty() {
                    problems.push((
                        format!("{at}.{name}"),
                        "not supported in a CUSTOM policy (Istio refuses it): the provider \
                         decides on identities; match them in an ALLOW or DENY policy"
                            .to_owned(),
                    ));
                }
            }
        }
        let names_peer = [
            &source.principals,
            &source.not_principals,
            &source.namespaces,
            &source.not_namespaces,
        ]
        .iter()
        .any(|v| !v.is_empty());
        if names_peer
            && !(source.service_accounts.is_empty() && source.not_service_accounts.is_empty())
        {
            problems.push((
                format!("{at}.serviceAccounts"),
                "cannot be set with principals or namespaces in one source (Istio refuses it): \
                 use another from entry"
                    .to_owned(),
            ));
        }
        let all_empty = identity.iter().all(|(_, v)| v.is_empty())
            && [
                &source.ip_blocks,
                &source.not_ip_blocks,
                &source.remote_ip_blocks,
                &source.not_remote_ip_blocks,
            ]
            .iter()
            .all(|v| v.is_empty());
        if all_empty {
            problems.push((
                at.to_owned(),
                "an empty source: name at least one field, or leave the from entry out".to_owned(),
            ));
        }
        let account = |v: &str| service_account(v, self.namespace);
        for (name, values, negated) in [
            ("principals", &source.principals, false),
            ("notPrincipals", &source.not_principals, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                strs,
                Test::Principal,
            ));
        }
        for (name, values, negated) in [
            ("requestPrincipals", &source.request_principals, false),
            ("notRequestPrincipals", &source.not_request_principals, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                |v| Ok(request_principal(v)),
                Test::RequestPrincipal,
            ));
        }
        for (name, values, negated) in [
            ("namespaces", &source.namespaces, false),
            ("notNamespaces", &source.not_namespaces, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                |v| Ok(Glob::parse(v)),
                Test::Namespace,
            ));
        }
        for (name, values, negated) in [
            ("serviceAccounts", &source.service_accounts, false),
            ("notServiceAccounts", &source.not_service_accounts, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                account,
                Test::ServiceAccount,
            ));
        }
        for (name, values, negated) in [
            ("trustDomains", &source.trust_domains, false),
            ("notTrustDomains", &source.not_trust_domains, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                strs,
                Test::TrustDomain,
            ));
        }
        for (name, values, negated) in [
            ("ipBlocks", &source.ip_blocks, false),
            ("notIpBlocks", &source.not_ip_blocks, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                IpBlock::parse,
                Test::SourceIp,
            ));
        }
        for (name, values, negated) in [
            ("remoteIpBlocks", &source.remote_ip_blocks, false),
            ("notRemoteIpBlocks", &source.not_remote_ip_blocks, true),
        ] {
            add(field(
                problems,
                at,
                name,
                values,
                negated,
                IpBlock::parse,
                Test::RemoteIp,
            ));
        }
        fields
    }

    fn condition(
        &self,
        problems: &mut Problems,
        at: &str,
        condition: &AuthzCondition,
    ) -> Vec<Field> {
        let key = condition.key.as_str();
        if key.is_empty() {
            problems.push((format!("{at}.key"), "must not be empty".to_owned()));
            return Vec::new();
        }
        if condition.values.is_empty() && condition.not_values.is_empty() {
            problems.push((
                at.to_owned(),
                format!("key {key}: at least one of values and notValues must be set"),
            ));
            return Vec::new();
        }
        let Some(kind) = self.condition_kind(problems, at, key) else {
            return Vec::new();
        };
        let mut fields = Vec::new();
        for (name, values, negated) in [
            ("values", &condition.values, false),
            ("notValues", &condition.not_values, true),
        ] {
            let strs = |v: &str| Ok(StrPattern::parse(v));
            let field = match &kind {
                Key::SourceIp => field(
                    problems,
                    at,
                    name,
                    values,
                    negated,
                    IpBlock::parse,
                    Test::SourceIp,
                ),
                Key::RemoteIp => field(
                    problems,
                    at,
                    name,
                    values,
                    negated,
                    IpBlock::parse,
                    Test::RemoteIp,
                ),
                Key::DestinationIp => field(
                    problems,
                    at,
                    name,
                    values,
                    negated,
                    IpBlock::parse,
                    Test::DestinationIp,
                ),
                Key::DestinationPort => {
                    field(problems, at, name, values, negated, port, Test::Port)
                }
                Key::SourceNamespace => field(
                    problems,
                    at,
                    name,
                    values,
                    negated,
                    |v| Ok(Glob::parse(v)),
                    Test::Namespace,
                ),
                Key::SourcePrincipal => {
                    field(problems, at, name, values, negated, strs, Test::Principal)
                }
                Key::RequestPrincipal => field(
                    problems,
                    at,
                    name,
                    values,
                    negated,
                    |v| Ok(request_principal(v)),
                    Test::RequestPrincipal,
                ),
                Key::Audiences => field(problems, at, name, values, negated, strs, Test::Audience),
                Key::Presenter => field(problems, at, name, values, negated, strs, Test::Presenter),
                Key::Sni => field(problems, at, name, values, negated, strs, Test::Sni),
                Key::Header(header) => {
                    field(problems, at, name, values, negated, strs, |patterns| {
                        Test::Header(header.clone(), patterns)
                    })
                }
                Key::Claim(path) => field(problems, at, name, values, negated, strs, |patterns| {
                    Test::Claim(path.clone(), patterns)
                }),
            };
            fields.extend(field);
        }
        fields
    }

    fn condition_kind(&self, problems: &mut Problems, at: &str, key: &str) -> Option<Key> {
        let mut refuse = |message: String| {
            problems.push((format!("{at}.key"), message));
            None
        };
        let custom_refuses = self.custom
            && (matches!(key, "source.namespace" | "source.principal")
                || key.starts_with("request.auth."));
        if custom_refuses {
            return refuse(format!(
                "{key} is not supported in a CUSTOM policy (Istio refuses it): match it in an \
                 ALLOW or DENY policy"
            ));
        }
        Some(match key {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.audiences" => Key::Audiences,
            "request.auth.presenter" => Key::Presenter,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::Sni,
            "destination.namespace" => {
                return refuse(
                    "destination.namespace is replaced by the policy's metadata.namespace \
                     (Istio refuses it)"
                        .to_owned(),
                );
            }
            "destination.name" | "destination.user" => {
                return refuse(format!(
                    "{key} is a deprecated attribute, only in rbac v1alpha1 (Istio refuses it)"
                ));
            }
            _ if key.starts_with("destination.labels") => {
                return refuse(
                    "destination.labels is replaced by the policy's selector (Istio refuses it)"
                        .to_owned(),
                );
            }
            _ if key.starts_with("experimental.") => {
                return refuse(format!(
                    "{key}: experimental Envoy metadata attributes are not supported by shunt"
                ));
            }
            _ => {
                if let Some(rest) = key.strip_prefix("request.headers") {
                    let name = rest
                        .strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .filter(|n| !n.is_empty() && !n.contains(['[', ']']));
                    let Some(name) = name else {
                        return refuse(format!("{key:?} should be request.headers[<name>]"));
                    };
                    match HeaderKey::parse(name) {
                        Ok(header) => Key::Header(header),
                        Err(message) => return refuse(message),
                    }
                } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                    match claim_path(rest) {
                        Some(path) => Key::Claim(path),
                        None => {
                            return refuse(format!(
                                "{key:?} should be request.auth.claims[<claim>], nested as \
                                 request.auth.claims[<a>][<b>]"
                            ));
                        }
                    }
                } else {
                    return refuse(format!(
                        "unknown attribute {key:?}: shunt reads request.headers[<name>], \
                         source.ip, remote.ip, source.namespace, source.principal, \
                         request.auth.principal, request.auth.audiences, \
                         request.auth.presenter, request.auth.claims[<name>], destination.ip, \
                         destination.port and connection.sni"
                    ));
                }
            }
        })
    }
}

/// A `when` key, parsed.
enum Key {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    DestinationIp,
    DestinationPort,
    Sni,
    Header(HeaderKey),
    Claim(Vec<String>),
}

/// `[a][b]` into `["a", "b"]`.
fn claim_path(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let names: Vec<String> = inner.split("][").map(str::to_owned).collect();
    names
        .iter()
        .all(|n| !n.is_empty() && !n.contains(['[', ']']))
        .then_some(names)
}

fn operation_fields(problems: &mut Problems, at: &str, operation: &AuthzOperation) -> Vec<Field> {
    let all = [
        &operation.hosts,
        &operation.not_hosts,
        &operation.ports,
        &operation.not_ports,
        &operation.methods,
        &operation.not_methods,
        &operation.paths,
        &operation.not_paths,
    ];
    if all.iter().all(|v| v.is_empty()) {
        problems.push((
            at.to_owned(),
            "an empty operation: name at least one field, or leave the to entry out".to_owned(),
        ));
    }
    let strs = |v: &str| Ok(StrPattern::parse(v));
    let mut fields = Vec::new();
    for (name, values, negated) in [
        ("hosts", &operation.hosts, false),
        ("notHosts", &operation.not_hosts, true),
    ] {
        fields.extend(field(problems, at, name, values, negated, strs, Test::Host));
    }
    for (name, values, negated) in [
        ("ports", &operation.ports, false),
        ("notPorts", &operation.not_ports, true),
    ] {
        fields.extend(field(problems, at, name, values, negated, port, Test::Port));
    }
    for (name, values, negated) in [
        ("methods", &operation.methods, false),
        ("notMethods", &operation.not_methods, true),
    ] {
        fields.extend(field(
            problems,
            at,
            name,
            values,
            negated,
            strs,
            Test::Method,
        ));
    }
    for (name, values, negated) in [
        ("paths", &operation.paths, false),
        ("notPaths", &operation.not_paths, true),
    ] {
        fields.extend(field(
            problems,
            at,
            name,
            values,
            negated,
            PathPattern::parse,
            Test::Path,
        ));
    }
    fields
}

/// One field: every value parsed (an empty one refused, as Istio does), or its problems.
fn field<T>(
    problems: &mut Problems,
    at: &str,
    name: &str,
    values: &[String],
    negated: bool,
    parse: impl Fn(&str) -> Result<T, String>,
    test: impl FnOnce(Vec<T>) -> Test,
) -> Option<Field> {
    if values.is_empty() {
        return None;
    }
    let mut parsed = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let result = if value.is_empty() {
            Err("an empty value matches nothing (Istio refuses it)".to_owned())
        } else {
            parse(value)
        };
        match result {
            Ok(value) => parsed.push(value),
            Err(message) => problems.push((format!("{at}.{name}[{i}]"), message)),
        }
    }
    (parsed.len() == values.len()).then(|| Field {
        test: test(parsed),
        negated,
    })
}

/// A port as Istio writes it: decimal digits, 0 to 65535.
fn port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{value:?} is not a port (0-65535)"))
}

/// `ns/sa`, or `sa` in the policy's namespace.
fn service_account(value: &str, namespace: &str) -> Result<(String, String), String> {
    let (ns, sa) = value.split_once('/').unwrap_or((namespace, value));
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if ok(ns) && ok(sa) {
        Ok((ns.to_owned(), sa.to_owned()))
    } else {
        Err(format!(
            "{value:?} is not a service account: write <namespace>/<name> or <name> (no \
             wildcards)"
        ))
    }
}

/// A `requestPrincipals` value as Istio matches it: `iss` and `sub` apart, split at the last
/// `/` (an issuer may be a URL); `*` is any non-empty `iss` and `sub`; a leading `*` is a
/// suffix of the issuer (or of the subject, without a `/`), a trailing `*` a prefix of the
/// subject (or of the issuer, without a `/`).
fn request_principal(value: &str) -> (StrPattern, StrPattern) {
    use StrPattern::{Exact, Prefix, Present, Suffix};
    let split = value.rsplit_once('/');
    if value == "*" {
        (Present, Present)
    } else if let Some(rest) = value.strip_prefix('*') {
        match split {
            Some(("*", sub)) => (Present, Exact(sub.to_owned())),
            Some((iss, sub)) => (Suffix(iss[1..].to_owned()), Exact(sub.to_owned())),
            None => (Present, Suffix(rest.to_owned())),
        }
    } else if let Some(rest) = value.strip_suffix('*') {
        match split {
            Some((iss, "*")) => (Exact(iss.to_owned()), Present),
            Some((iss, sub)) => (
                Exact(iss.to_owned()),
                Prefix(sub[..sub.len() - 1].to_owned()),
            ),
            None => (Prefix(rest.to_owned()), Present),
        }
    } else {
        match split {
            Some((iss, sub)) => (Exact(iss.to_owned()), Exact(sub.to_owned())),
            None => (Exact(value.to_owned()), Exact(String::new())),
        }
    }
}
