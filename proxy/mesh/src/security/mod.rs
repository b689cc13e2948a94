//! Istio's security policies, compiled, with no I/O: [`PeerAuthnTable`] answers which mTLS
//! mode a workload's inbound connections need (`PeerAuthentication`), and why;
//! [`authz::AuthzTable`] whether a connection or request may reach it
//! (`AuthorizationPolicy`).
//!
//! Both the agent (to validate, explain, and decide which pods' inbound capture must fail
//! closed) and the proxy (to enforce) build it from the same `MeshState`, so they cannot
//! disagree.
#![forbid(unsafe_code)]

pub mod authz;
mod error;
mod peer_authn;
#[cfg(test)]
mod tests;

pub use authz::AuthzTable;
pub use error::Error;
pub use peer_authn::{MtlsDecision, MtlsMode, MtlsSource, PeerAuthnScope, PeerAuthnTable};

/// Checks `state`'s PeerAuthentications exactly as [`PeerAuthnTable::build`] compiles them.
#[must_use]
pub fn validate(state: &crate::model::MeshState) -> Vec<Error> {
    PeerAuthnTable::build(state).1
}
