//! Istio traffic management, compiled: which route, which destination, which policy.
//!
//! [`RouteTable::build`] compiles a `MeshState`'s VirtualServices, DestinationRules,
//! ServiceEntries and RateLimitPolicies; [`Routes`] is what the data path asks of it;
//! [`explain`] is the same lookup with its reasons, for `shuntctl`.
#![forbid(unsafe_code)]

mod compile;
mod convert;
mod decision;
mod error;
pub mod explain;
#[cfg(test)]
mod gateway_tests;
mod table;
#[cfg(test)]
mod tests;

pub use compile::{RouteTable, mesh_settings, trusted_proxies};
pub use convert::{
    Visibility, declared_protocol, default_retry_policy, grpc_status_name, service_port_protocol,
};
pub use decision::*;
pub use error::Error;
pub use table::{MatchedRoute, Trace};

/// Checks `state`'s Istio objects exactly as the proxy compiles them.
#[must_use]
pub fn validate(state: &crate::model::MeshState) -> Vec<Error> {
    if !has_routing_objects(state) {
        // Problems are only ever found in these objects; the table (a copy of every workload
        // and Service) is not built just to find none (issue 18's agent memory at scale).
        return Vec::new();
    }
    RouteTable::build(state).1
}

/// Whether `state` has any object that [`RouteTable::build`] can find a problem in.
fn has_routing_objects(state: &crate::model::MeshState) -> bool {
    !(state.virtual_services.is_empty()
        && state.destination_rules.is_empty()
        && state.fail_closed.destination_rules.is_empty()
        && state.service_entries.is_empty()
        && state.gateways.is_empty()
        && state.ingresses.is_empty()
        && state.rate_limit_policies.is_empty())
}
