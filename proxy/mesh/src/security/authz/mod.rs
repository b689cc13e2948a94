//! `AuthorizationPolicy`, compiled and evaluated with no I/O: [`AuthzTable`] answers whether
//! a connection or a request may reach a workload ([`AuthzTable::evaluate`] over [`Facts`]),
//! and why ([`Decision`]). The agent builds it to validate and to decide which pods' inbound
//! capture fails closed; the proxy to enforce, at the destination side.
//!
//! Istio's semantics, as its sidecar applies them (`pilot/pkg/security/authz`):
//! - **Scope.** `metadata.namespace` and an optional `selector`; a policy in the root
//!   namespace (MeshConfig `rootNamespace`) applies to every namespace, its selector matching
//!   workloads of all of them. `targetRef(s)` are not supported yet (the agent refuses them).
//! - **Order.** CUSTOM (the caller asks the providers of [`Decision::custom`] first; any may
//!   deny), then a matching DENY denies, then no ALLOW policy allows, a matching ALLOW allows,
//!   and otherwise the request is denied. AUDIT only reports ([`Decision::audits`]);
//!   `istio.io/dry-run: "true"` makes any policy a shadow that only reports
//!   ([`Decision::dry_run`]).
//! - **Matching.** A policy matches when any rule does; a rule when one `from` entry, one
//!   `to` entry and every `when` match, an absent section matching anything. Fields of a
//!   source or operation are ANDed, the values of a field ORed; a `not…` field matches when
//!   none of its values does. Strings: `abc` exact, `abc*` prefix, `*abc` suffix, `*` present
//!   (non-empty; for headers and methods, present). An ALLOW without rules matches nothing
//!   (it allows nothing); `rules: [{}]` matches everything; a DENY, AUDIT or CUSTOM without
//!   rules has no effect ([`crate::security::Error::Ignored`]).
//! - **Sources.** `principals` (the peer's SPIFFE id without `spiffe://`), `namespaces` (a
//!   glob: every `*` is a wildcard, as Istio's regex), `serviceAccounts` (`ns/sa`, or `sa` in
//!   the policy's namespace) and `trustDomains` need an authenticated peer ([`Facts::peer`]):
//!   against plaintext they never match, and their `not…` twins always do. `ipBlocks` is the
//!   direct peer, `remoteIpBlocks` the client from `X-Forwarded-For`
//!   ([`HttpFacts::remote_ip`]: the direct peer's, or unknown and failing closed); `requestPrincipals` is the JWT's `iss`
//!   and `sub` (`iss/sub`, split at the last `/`), matched apart as Istio does.
//! - **Operations.** `hosts` (the `:authority`, case-insensitive, exact: `example.com` does
//!   not match `example.com:8080`), `methods`, `paths` (the normalized path without query;
//!   `{*}` one segment, `{**}` any rest, Envoy's URI template) and `ports` (the destination
//!   workload's).
//! - **`when` keys.** `request.headers[X]` (every value of a repeated header is tried),
//!   `source.ip`, `source.namespace`, `source.principal`, `remote.ip`,
//!   `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter`,
//!   `request.auth.claims[c]` (nested `[a][b]`; a list claim matches if any element does),
//!   `destination.ip`, `destination.port`, `connection.sni`. Any other key makes the policy
//!   invalid.
//! - **TCP, as the sidecar does** (shunt terminates HTTP itself). The HTTP-only fields are
//!   `hosts`, `methods`, `paths`, `requestPrincipals`, `remoteIpBlocks` and the `request.*`
//!   and `remote.ip` keys. On a TCP connection an ALLOW rule with any of them is dropped (an
//!   ALLOW whose rules are all dropped allows nothing: all TCP is denied); a DENY or AUDIT
//!   rule loses only those fields, which widens it (`to: methods: [GET]` alone denies all
//!   TCP). CUSTOM takes no part on TCP: its providers are HTTP ones, which Istio leaves out
//!   of TCP chains. ztunnel differs: it enforces L4 rules only and leaves the HTTP-only ones
//!   to a waypoint proxy; shunt, which terminates HTTP itself, enforces both in one pass.
//! - **Failing closed.** A policy that cannot be compiled is refused with its object and
//!   field; unless it is an AUDIT or a dry run, it stands in as a policy that denies
//!   everything to the workloads it selects (all of its namespace, or of the mesh in the root
//!   namespace, when its selector cannot be read) until it is fixed
//!   ([`crate::istio::FailClosed`]).
#![forbid(unsafe_code)]

mod compile;
mod decision;
mod facts;
mod matcher;
mod table;
#[cfg(test)]
mod tests;

pub use decision::{AuthzAction, AuthzScope, CustomCheck, Decision, PolicySummary, RuleRef};
pub use facts::{Facts, HttpFacts, RemoteIp, RequestAuth};
pub use table::AuthzTable;

/// Checks `state`'s AuthorizationPolicies exactly as [`AuthzTable::build`] compiles them.
#[must_use]
pub fn validate(state: &crate::model::MeshState) -> Vec<crate::security::Error> {
    AuthzTable::build(state).1
}
