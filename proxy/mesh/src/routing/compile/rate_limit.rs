//! shunt's RateLimitPolicy, bound to the routes it names.

use std::collections::HashMap;
use std::sync::Arc;

use super::compiled::*;
use crate::model::MeshState;
use crate::routing::Error;
use crate::routing::convert::{self, MISSING, Problems};
use crate::routing::decision::RateLimit;

impl RouteTable {
    pub(super) fn rate_limits(
        &mut self,
        state: &MeshState,
        errors: &mut Vec<Error>,
    ) -> HashMap<(String, String, String), Arc<RateLimit>> {
        let mut by_route = HashMap::new();
        for policy in merge_order(&state.rate_limit_policies) {
            let object = object_ref("RateLimitPolicy", &policy.metadata);
            let spec = &policy.spec;
            let mut p = Problems::default();
            let rps = match spec.requests_per_second {
                None => {
                    p.add("spec.requestsPerSecond", MISSING);
                    None
                }
                Some(r) if !(r.0 > 0.0 && r.0.is_finite()) => {
                    p.add(
                        "spec.requestsPerSecond",
                        format!("expected a number > 0, got {}", r.0),
                    );
                    None
                }
                Some(r) => Some(r.0),
            };
            let burst = match (spec.burst, rps) {
                (Some(b), _) => convert::int_in(&mut p, "spec.burst", b, 1, i64::from(u32::MAX)),
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a positive rate, capped"
                )]
                (None, Some(r)) => Some(r.ceil().min(f64::from(u32::MAX)) as u32),
                (None, None) => None,
            };
            match (&spec.service, &spec.virtual_service) {
                (Some(_), Some(_)) | (None, None) => {
                    p.add("spec", "set exactly one of service and virtualService")
                }
                (Some(s), None) if s.is_empty() => p.add("spec.service", MISSING),
                (None, Some(vs)) => {
                    if vs.name.is_empty() {
                        p.add("spec.virtualService.name", MISSING);
                    }
                    if vs.route.is_empty() {
                        p.add("spec.virtualService.route", MISSING);
                    }
                }
                _ => {}
            }
            if !p.is_empty() {
                errors.extend(invalid(&object, p));
                continue;
            }
            let (Some(requests_per_second), Some(burst)) = (rps, burst) else {
                continue;
            };
            let limit = Arc::new(RateLimit {
                policy: object.clone(),
                requests_per_second,
                burst,
            });
            if let Some(service) = &spec.service {
                let host = self.resolve_host(service, &policy.metadata.namespace);
                if !self.registry.contains_key(&host) {
                    errors.push(Error::Warning {
                        object: object.clone(),
                        field: "spec.service".into(),
                        message: format!("no Service or ServiceEntry has host {host}; the policy limits nothing until one does"),
                    });
                }
                if self.host_rate_limits.contains_key(&host) {
                    errors.push(Error::Warning {
                        object,
                        field: "spec.service".into(),
                        message: format!("host {host} already has a RateLimitPolicy (the first by namespace/name applies); this one is ignored"),
                    });
                    continue;
                }
                self.host_rate_limits.insert(host, limit);
            } else if let Some(vs) = &spec.virtual_service {
                let found = state.virtual_services.iter().any(|v| {
                    v.metadata.namespace == policy.metadata.namespace
                        && v.metadata.name == vs.name
                        && v.spec
                            .http
                            .iter()
                            .any(|r| r.name.as_deref() == Some(vs.route.as_str()))
                });
                if !found {
                    errors.push(Error::Warning {
                        object: object.clone(),
                        field: "spec.virtualService".into(),
                        message: format!(
                            "VirtualService {}/{} has no http route named {:?}; the policy limits nothing until it does",
                            policy.metadata.namespace, vs.name, vs.route
                        ),
                    });
                }
                by_route
                    .entry((
                        policy.metadata.namespace.clone(),
                        vs.name.clone(),
                        vs.route.clone(),
                    ))
                    .or_insert(limit);
            }
        }
        by_route
    }
}
