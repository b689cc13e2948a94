//! What authorization answers: [`Decision`], and the names it gives policies and rules.

use std::fmt;

use crate::routing::ObjectRef;

/// `spec.action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthzAction {
    /// `CUSTOM`: an extension provider (ext_authz) decides; evaluated first.
    Custom,
    /// `DENY`: a match denies.
    Deny,
    /// `ALLOW` (the default): with any ALLOW policy on a workload, only a match allows.
    Allow,
    /// `AUDIT`: a match marks the request for the log and metrics; never decides.
    Audit,
}

impl AuthzAction {
    /// Istio's name: `CUSTOM`, `DENY`, `ALLOW` or `AUDIT` (the `action` metric label).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Custom => "CUSTOM",
            Self::Deny => "DENY",
            Self::Allow => "ALLOW",
            Self::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for AuthzAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy, and which of its rules, took part in a decision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// The AuthorizationPolicy.
    pub policy: ObjectRef,
    /// Its action, as it acted: a rejected policy standing in to fail closed acts as `DENY`.
    pub action: AuthzAction,
    /// The index in `spec.rules` of the rule that matched. `None`: no rule, which is the case
    /// for a rejected policy standing in to fail closed (an action `DENY` with no rule), and
    /// for a dry-run ALLOW policy none of whose rules matched.
    pub rule: Option<usize>,
}

impl RuleRef {
    /// Envoy's RBAC policy id, as Istio names it: `ns[shop]-policy[deny-admin]-rule[0]`;
    /// without a rule (a rejected policy's stand-in), `ns[shop]-policy[bad]`.
    #[must_use]
    pub fn envoy_policy_id(&self) -> String {
        let head = format!("ns[{}]-policy[{}]", self.policy.namespace, self.policy.name);
        match self.rule {
            Some(rule) => format!("{head}-rule[{rule}]"),
            None => head,
        }
    }
}

impl fmt::Display for RuleRef {
    /// `shop/deny-admin rule 0`, or `shop/bad` without a rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.policy.namespace, self.policy.name)?;
        if let Some(rule) = self.rule {
            write!(f, " rule {rule}")?;
        }
        Ok(())
    }
}

/// A CUSTOM policy that matched: the proxy must ask its provider (Envoy's HTTP ext_authz
/// contract) before anything else, and deny if the provider does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomCheck {
    /// `spec.provider.name`: a MeshConfig `extensionProviders[].name`. One that MeshConfig
    /// does not define must deny the request (Istio turns such a policy into a DENY).
    pub provider: String,
    /// The policy and its matching rule.
    pub policy: RuleRef,
}

/// The answer for one connection or request, by Istio's order: CUSTOM, then DENY, then
/// ALLOW; AUDIT and dry-run policies only report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether DENY and ALLOW policies let it through. The CUSTOM checks in
    /// [`Self::custom`] come on top: each must allow too.
    pub allowed: bool,
    /// The policy (and rule index) that decided: the matching DENY, the matching ALLOW,
    /// or none (no ALLOW policy: allowed by default; ALLOW policies but none matched).
    pub by: Option<RuleRef>,
    /// The matching AUDIT policies (with their first matching rule).
    pub audits: Vec<RuleRef>,
    /// Dry-run (shadow) policies that matched, each with whether it would deny: a DENY
    /// would (`true`); an ALLOW would not (`false`), and AUDIT and CUSTOM shadows are
    /// `false` (a CUSTOM shadow's provider is not asked). When dry-run ALLOW policies apply
    /// and none of them matched, each is listed with no rule and `true`: enforced, they
    /// would deny (Envoy's shadow engine result).
    pub dry_run: Vec<(RuleRef, bool)>,
    /// The CUSTOM policies that matched, in evaluation order: the providers to ask.
    pub custom: Vec<CustomCheck>,
    /// For logs: `allowed by shop/allow-get rule 1`, `denied by shop/deny-admin rule 0`, ...
    pub reason: String,
}

impl Decision {
    /// Envoy's `response_code_details` for an RBAC denial:
    /// `rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]-rule[0]]`, or
    /// `rbac_access_denied_matched_policy[none]` when no ALLOW policy matched; `None` when
    /// allowed.
    #[must_use]
    pub fn response_code_details(&self) -> Option<String> {
        if self.allowed {
            return None;
        }
        let id = self
            .by
            .as_ref()
            .map_or_else(|| "none".to_owned(), RuleRef::envoy_policy_id);
        Some(format!("rbac_access_denied_matched_policy[{id}]"))
    }
}

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthzScope {
    /// In the root namespace, without a selector: every workload of the mesh.
    Mesh,
    /// In the root namespace, with a selector: the matching workloads of every namespace.
    MeshSelector,
    /// Without a selector: every workload of its namespace.
    Namespace,
    /// With a selector: the matching workloads of its namespace.
    Workload,
}

impl fmt::Display for AuthzScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mesh => "mesh-wide",
            Self::MeshSelector => "mesh-wide selector",
            Self::Namespace => "namespace-wide",
            Self::Workload => "workload selector",
        })
    }
}

/// One policy that applies to a workload, for `shuntctl policies` and `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySummary {
    /// The AuthorizationPolicy.
    pub policy: ObjectRef,
    /// Its action; a rejected stand-in's is `DENY`.
    pub action: AuthzAction,
    /// How it selects the workload.
    pub scope: AuthzScope,
    /// `istio.io/dry-run: "true"`: it only reports.
    pub dry_run: bool,
    /// It was rejected and stands in, denying everything, until it is fixed.
    pub fail_closed: bool,
    /// A CUSTOM policy's provider.
    pub provider: Option<String>,
    /// How many rules it has (a stand-in: none).
    pub rules: usize,
    /// Whether any of its rules needs the HTTP request (an HTTP-only field, or CUSTOM).
    pub needs_http: bool,
}

impl fmt::Display for PolicySummary {
    /// `DENY shop/deny-admin (namespace-wide, 2 rules)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} ({}",
            self.action, self.policy.namespace, self.policy.name, self.scope
        )?;
        if self.fail_closed {
            f.write_str("; rejected, denies everything until it is fixed")?;
        } else {
            let plural = if self.rules == 1 { "" } else { "s" };
            write!(f, ", {} rule{plural}", self.rules)?;
        }
        if let Some(provider) = &self.provider {
            write!(f, ", provider {provider}")?;
        }
        if self.dry_run {
            f.write_str(", dry run")?;
        }
        f.write_str(")")
    }
}
