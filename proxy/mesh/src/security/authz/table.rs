//! [`AuthzTable`]: every AuthorizationPolicy of a `MeshState`, compiled, and the evaluation
//! of one connection or request against the policies of its destination workload.

use std::collections::HashMap;

use super::compile::{self, Policy};
use super::decision::{AuthzAction, CustomCheck, Decision, PolicySummary};
use super::facts::Facts;
use super::matcher::Ctx;
use crate::istio::FailClosed;
use crate::model::{MeshState, Workload};
use crate::security::Error;

/// The compiled AuthorizationPolicies of one `MeshState` (see the module docs for Istio's
/// semantics as shunt applies them).
#[derive(Debug, Default)]
pub struct AuthzTable {
    /// The root namespace's policies, which reach every namespace.
    mesh: Vec<Policy>,
    /// Every other namespace's.
    namespaces: HashMap<String, Vec<Policy>>,
}

// The proxy shares one table, and hands decisions, across its worker threads.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<AuthzTable>();
    shared::<Decision>();
};

impl AuthzTable {
    /// Compiles `state`'s AuthorizationPolicies and the rejected ones standing in to fail
    /// closed (`state.fail_closed`). Returns every problem found: [`Error::Invalid`] leaves
    /// the policy out (and, unless it is an AUDIT or a dry run, it fails closed);
    /// [`Error::Ignored`] leaves it in.
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
        let root = state.mesh.root_namespace.as_str();
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut fail_closed = FailClosed::default();
        for written in &state.authorization_policies {
            let object = compile::object_ref(&written.metadata.namespace, &written.metadata.name);
            let (compiled, warnings) = compile::compile(written, root);
            errors.extend(warnings.into_iter().map(|(field, message)| Error::Ignored {
                object: object.clone(),
                field,
                message,
            }));
            match compiled {
                Ok(policy) => policies.push(policy),
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|(field, message)| Error::Invalid {
                        object: object.clone(),
                        field,
                        message,
                    }));
                    // The agent sends only valid policies, the rejected ones in
                    // `fail_closed`; should an invalid one arrive anyway, it fails closed here
                    // as it would have there.
                    if let Ok(mut raw) = serde_json::to_value(written) {
                        raw["kind"] = compile::KIND.into();
                        fail_closed.add_rejected(&raw);
                    }
                }
            }
        }
        policies.extend(
            state
                .fail_closed
                .authorization_policies
                .iter()
                .chain(&fail_closed.authorization_policies)
                .map(|rejected| compile::stand_in(rejected, root)),
        );
        policies.sort_by(|a, b| a.order(root).cmp(&b.order(root)));
        let mut table = Self::default();
        for policy in policies {
            if *policy.object.namespace == *root {
                table.mesh.push(policy);
            } else {
                table
                    .namespaces
                    .entry(policy.object.namespace.to_string())
                    .or_default()
                    .push(policy);
            }
        }
        (table, errors)
    }

    /// The policies that apply to `workload`: the root namespace's, then its namespace's.
    fn selecting<'s>(&'s self, workload: &'s Workload) -> impl Iterator<Item = &'s Policy> {
        self.mesh
            .iter()
            .chain(
                self.namespaces
                    .get(&workload.namespace)
                    .into_iter()
                    .flatten(),
            )
            .filter(move |policy| policy.selects(workload))
    }

    /// Decides one connection (`facts.http: None`, with the TCP rewriting) or one request to
    /// `workload`, in Istio's order: CUSTOM (reported in [`Decision::custom`]: the caller asks
    /// the providers first; on TCP there are none, as Istio leaves HTTP ext_authz providers
    /// out of TCP chains), then any matching DENY denies, then with no ALLOW policy the
    /// request is allowed, with a matching ALLOW it is allowed, otherwise denied. AUDIT and
    /// dry-run policies only report.
    ///
    /// HTTP traffic is decided per request (`Some(http)`); its connection is not denied by
    /// an L4 evaluation, as Envoy's HTTP chain has no TCP RBAC, unless
    /// [`Self::needs_http`] is false, when the two cannot differ.
    #[must_use]
    pub fn evaluate(&self, workload: &Workload, facts: &Facts<'_>) -> Decision {
        let ctx = Ctx::new(facts);
        let tcp = facts.http.is_none();
        let enforced = |action: AuthzAction| {
            self.selecting(workload)
                .filter(move |p| p.action == action && !p.dry_run)
        };
        let matched = |policy: &Policy| {
            policy
                .first_match(&ctx, tcp)
                .map(|rule| policy.rule_ref(rule))
        };

        // shunt's providers are HTTP ones (`envoyExtAuthzHttp`), which Istio leaves out of
        // TCP filter chains: on TCP, CUSTOM policies take no part.
        let custom = enforced(AuthzAction::Custom)
            .filter(|_| !tcp)
            .filter_map(|policy| {
                Some(CustomCheck {
                    provider: policy.provider.clone().unwrap_or_default(),
                    policy: matched(policy)?,
                })
            })
            .collect();

        let (allowed, by, reason) = if let Some(by) = enforced(AuthzAction::Deny).find_map(matched)
        {
            let reason = if by.rule.is_none() {
                format!(
                    "denied by {by}: the AuthorizationPolicy is invalid and fails closed until it \
                     is fixed"
                )
            } else {
                format!("denied by {by}")
            };
            (false, Some(by), reason)
        } else {
            let mut allows = enforced(AuthzAction::Allow).peekable();
            if allows.peek().is_none() {
                (true, None, "allowed: no ALLOW policy applies".to_owned())
            } else if let Some(by) = allows.find_map(matched) {
                let reason = format!("allowed by {by}");
                (true, Some(by), reason)
            } else {
                let names: Vec<String> = enforced(AuthzAction::Allow)
                    .map(|p| format!("{}/{}", p.object.namespace, p.object.name))
                    .collect();
                let reason = format!("denied: no ALLOW policy matched ({})", names.join(", "));
                (false, None, reason)
            }
        };

        let audits = enforced(AuthzAction::Audit).filter_map(matched).collect();

        let mut dry_run = Vec::new();
        let mut shadow_allows = Vec::new();
        let mut shadow_allowed = false;
        let shadows = self
            .selecting(workload)
            .filter(|p| p.dry_run && !(tcp && p.action == AuthzAction::Custom));
        for policy in shadows {
            if policy.action == AuthzAction::Allow {
                shadow_allows.push(policy);
            }
            if let Some(rule) = matched(policy) {
                shadow_allowed |= policy.action == AuthzAction::Allow;
                dry_run.push((rule, policy.action == AuthzAction::Deny));
            }
        }
        if !shadow_allowed {
            dry_run.extend(shadow_allows.iter().map(|p| (p.rule_ref(None), true)));
        }

        Decision {
            allowed,
            by,
            audits,
            dry_run,
            custom,
            reason,
        }
    }

    /// Any ALLOW or DENY (or fail-closed stand-in) applies: the pod's inbound capture
    /// must fail closed when the proxy is gone. CUSTOM counts too (it can deny); AUDIT, dry
    /// runs and DENY or CUSTOM policies without rules (which never match) do not.
    #[must_use]
    pub fn enforces(&self, workload: &Workload) -> bool {
        self.selecting(workload).any(|policy| {
            !policy.dry_run
                && match policy.action {
                    AuthzAction::Allow => true,
                    AuthzAction::Deny | AuthzAction::Custom => policy.has_rules(),
                    AuthzAction::Audit => false,
                }
        })
    }

    /// Whether a CUSTOM policy with rules (not a dry run) applies to the workload: its
    /// requests need their provider's check, so they take the workload's own inbound pass.
    #[must_use]
    pub fn has_custom(&self, workload: &Workload) -> bool {
        self.selecting(workload).any(|policy| {
            !policy.dry_run && policy.action == AuthzAction::Custom && policy.has_rules()
        })
    }

    /// Whether any policy that applies to the workload needs HTTP facts (so TCP-only
    /// evaluation is not enough) — lets the proxy skip L7 work when false. True when a rule
    /// of any applicable policy (dry runs and AUDIT included) has an HTTP-only field, or a
    /// CUSTOM policy with rules applies (its provider is asked per request).
    #[must_use]
    pub fn needs_http(&self, workload: &Workload) -> bool {
        self.selecting(workload).any(|policy| policy.needs_http)
    }

    /// The policies that apply, in evaluation order, for `shuntctl policies`/explain:
    /// CUSTOM, DENY (rejected stand-ins among them), ALLOW, then AUDIT; dry runs in their
    /// action's place, marked.
    #[must_use]
    pub fn applicable(&self, workload: &Workload) -> Vec<PolicySummary> {
        let mut policies: Vec<&Policy> = self.selecting(workload).collect();
        // Stable: within an action, the table's order.
        policies.sort_by_key(|policy| policy.action);
        policies.iter().map(|policy| policy.summary()).collect()
    }
}
