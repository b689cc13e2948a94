//! Builds a [`RouteTable`] from a [`MeshState`]: checks every Istio object, drops the invalid
//! ones whole (each problem named by object and field), and compiles the rest.
//!
//! Several VirtualServices for one host are merged: ordered by creationTimestamp (absent
//! first), then namespace/name, their `http`, `tls` and `tcp` routes are concatenated in that
//! order, and the first route that matches wins.
//!
//! DestinationRules are looked up per client namespace, as Istio does: among the rules
//! visible to the client (`exportTo`; a rule always applies in its own namespace), one in the
//! client's namespace, else one in the host's namespace (the Service's or ServiceEntry's),
//! else one in the root namespace (MeshConfig `rootNamespace`, `istio-system` by default),
//! else the others by namespace/name; within each step an exact host beats the longest
//! wildcard. Several rules for one host in one namespace: the first in merge order
//! (creationTimestamp, then name) wins; the others are reported.
//!
//! A rejected rule that asked for TLS (`MeshState::fail_closed`) takes its place in that
//! order with no subsets, and every cluster under it refuses connections
//! ([`crate::routing::UpstreamTls::Refuse`]).

mod clusters;
mod compiled;
mod destination_rule;
pub(in crate::routing) mod gateway;
mod ingress;
mod mesh_config;
mod rate_limit;
mod service_entry;
mod tls;
mod virtual_service;

use std::sync::Arc;

use crate::istio;
use crate::model::{MeshState, Workload};
use crate::routing::Error;
use crate::settings::MeshSettings;
use compiled::{merge_key, merge_order};

pub use compiled::RouteTable;
pub(in crate::routing) use compiled::*;
pub use mesh_config::{mesh_settings, trusted_proxies};
pub(in crate::routing) use virtual_service::default_route;

impl RouteTable {
    /// Compiles `state`. Returns the table and every problem found; an invalid object is left
    /// out whole, the rest applies.
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
        let mut errors = Vec::new();
        // Served Ingresses become Gateways and VirtualServices, compiled as written ones are.
        let converted;
        let state = if state.ingresses.is_empty() {
            state
        } else {
            let (gateways, virtual_services) = ingress::convert(state, &mut errors);
            let mut with = state.clone();
            with.gateways.extend(gateways);
            with.virtual_services.extend(virtual_services);
            converted = with;
            &converted
        };
        let mut table = Self {
            mesh: state.mesh.clone(),
            ..Self::default()
        };
        let workloads: Vec<Arc<Workload>> = state.workloads.iter().cloned().map(Arc::new).collect();
        for workload in &workloads {
            if let Some(ip) = workload.ip {
                let replace = table
                    .workloads_by_ip
                    .get(&ip)
                    .is_none_or(|held| !held.ready && workload.ready);
                if replace {
                    table.workloads_by_ip.insert(ip, workload.clone());
                }
            }
        }
        table.add_services(state);
        for entry in merge_order(&state.service_entries) {
            table.add_service_entry(entry, &mut errors);
        }
        // Valid and rejected rules in one merge order, so that a rejected rule stands where
        // it would have stood.
        let mut rules: Vec<(&istio::Metadata, Option<&istio::DestinationRule>, _)> = state
            .destination_rules
            .iter()
            .map(|r| (&r.metadata, Some(r), None))
            .chain(
                state
                    .fail_closed
                    .destination_rules
                    .iter()
                    .map(|r| (&r.metadata, None, Some(r))),
            )
            .collect();
        rules.sort_by(|a, b| merge_key(a.0).cmp(&merge_key(b.0)));
        for (_, valid, rejected) in rules {
            if let Some(rule) = valid {
                table.add_destination_rule(rule, &mut errors);
            }
            if let Some(rule) = rejected {
                table.add_rejected_destination_rule(rule, &mut errors);
            }
        }
        // Lookups fall back to "the others by namespace/name".
        table.destination_rules.sort_by(|a, b| {
            (&a.object.namespace, &a.object.name).cmp(&(&b.object.namespace, &b.object.name))
        });
        table.build_clusters(&workloads);
        let rate_limits = table.rate_limits(state, &mut errors);
        table.add_gateways(state, &mut errors);
        for vs in merge_order(&state.virtual_services) {
            table.add_virtual_service(vs, &rate_limits, &mut errors);
        }
        table.build_default_routes();
        (table, errors)
    }

    /// The mesh-wide settings the table was built from (MeshConfig, with the agent's flags).
    #[must_use]
    pub fn mesh_settings(&self) -> &MeshSettings {
        &self.mesh
    }
}
