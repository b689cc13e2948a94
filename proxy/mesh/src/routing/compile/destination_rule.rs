//! DestinationRules: subsets and traffic policies, and the per-client lookup order.

use std::sync::Arc;

use super::compiled::*;
use super::tls::upstream_tls;
use crate::istio;
use crate::routing::Error;
use crate::routing::convert::{self, MISSING, Problems, Visibility};
use crate::routing::decision::{Host, TrafficPolicy, UpstreamTls};

impl PolicyParts {
    pub(super) fn overridden_by(&self, other: &Self) -> Self {
        Self {
            load_balancer: other
                .load_balancer
                .clone()
                .or_else(|| self.load_balancer.clone()),
            connection_pool: other
                .connection_pool
                .clone()
                .or_else(|| self.connection_pool.clone()),
            outlier_detection: other
                .outlier_detection
                .clone()
                .or_else(|| self.outlier_detection.clone()),
            tls: other.tls.clone().or_else(|| self.tls.clone()),
        }
    }
}

impl PolicyLevel {
    pub(super) fn at_port(&self, port: u16) -> PolicyParts {
        self.ports.iter().find(|(p, _)| *p == port).map_or_else(
            || self.parts.clone(),
            |(_, parts)| self.parts.overridden_by(parts),
        )
    }
}

impl CompiledDestinationRule {
    /// Top level, then the subset's level, each with its port-level settings for `port`.
    pub(in crate::routing) fn policy(
        &self,
        subset: Option<&CompiledSubset>,
        port: u16,
    ) -> TrafficPolicy {
        let mut parts = self.top.at_port(port);
        if let Some(subset) = subset {
            parts = parts.overridden_by(&subset.policy.at_port(port));
        }
        TrafficPolicy {
            load_balancer: parts.load_balancer.unwrap_or_default(),
            connection_pool: parts.connection_pool.unwrap_or_default(),
            outlier_detection: parts.outlier_detection,
            tls: parts.tls,
            source: Some(self.object.clone()),
        }
    }
}

impl RouteTable {
    pub(super) fn add_destination_rule(
        &mut self,
        rule: &istio::DestinationRule,
        errors: &mut Vec<Error>,
    ) {
        let object = object_ref("DestinationRule", &rule.metadata);
        let spec = &rule.spec;
        let mut p = Problems::default();
        let mut warnings = Problems::default();
        if spec.host.is_empty() {
            p.add("spec.host", MISSING);
        }
        let top = spec
            .traffic_policy
            .as_ref()
            .map(|tp| policy_level(&mut p, &mut warnings, "spec.trafficPolicy", tp))
            .unwrap_or_default();
        let mut subsets: Vec<CompiledSubset> = Vec::new();
        for (i, subset) in spec.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                p.add(format!("{at}.name"), MISSING);
            } else if subsets.iter().any(|s| *s.name == *subset.name) {
                p.add(
                    format!("{at}.name"),
                    format!("subset {:?} is defined twice", subset.name),
                );
            }
            let policy = subset
                .traffic_policy
                .as_ref()
                .map(|tp| policy_level(&mut p, &mut warnings, &format!("{at}.trafficPolicy"), tp))
                .unwrap_or_default();
            subsets.push(CompiledSubset {
                name: subset.name.as_str().into(),
                labels: subset.labels.clone(),
                policy,
            });
        }
        if spec.workload_selector.is_some() {
            p.add(
                "spec.workloadSelector",
                "workloadSelector is not supported in local mode",
            );
        }
        let visibility = convert::export_to(
            &mut p,
            "spec.exportTo",
            &spec.export_to,
            &rule.metadata.namespace,
        );
        if !p.is_empty() {
            errors.extend(invalid(&object, p));
            return;
        }
        errors.extend(
            warnings
                .list
                .into_iter()
                .map(|(field, message)| Error::Warning {
                    object: object.clone(),
                    field,
                    message,
                }),
        );
        let host = self.resolve_host(&spec.host, &rule.metadata.namespace);
        self.push_destination_rule(
            CompiledDestinationRule {
                object,
                host,
                visibility,
                top,
                subsets,
            },
            errors,
        );
    }

    /// A rejected DestinationRule that asked for TLS, in its place: no subsets, and every
    /// cluster under it refuses connections ([`UpstreamTls::Refuse`]).
    pub(super) fn add_rejected_destination_rule(
        &mut self,
        rejected: &istio::RejectedDestinationRule,
        errors: &mut Vec<Error>,
    ) {
        let object = object_ref("DestinationRule", &rejected.metadata);
        let namespace = &rejected.metadata.namespace;
        // An exportTo that cannot be read (or checked) exports it everywhere: whoever it may
        // have applied to is refused.
        let visibility = rejected
            .export_to
            .as_ref()
            .and_then(|list| {
                let mut p = Problems::default();
                let visibility = convert::export_to(&mut p, "spec.exportTo", list, namespace);
                p.is_empty().then_some(visibility)
            })
            .unwrap_or(Visibility::All);
        let top = PolicyLevel {
            parts: PolicyParts {
                tls: Some(UpstreamTls::Refuse {
                    rule: object.clone(),
                }),
                ..PolicyParts::default()
            },
            ports: Vec::new(),
        };
        let host = self.resolve_host(&rejected.host, namespace);
        self.push_destination_rule(
            CompiledDestinationRule {
                object,
                host,
                visibility,
                top,
                subsets: Vec::new(),
            },
            errors,
        );
    }

    /// One rule per namespace and host: the first in merge order stays.
    fn push_destination_rule(&mut self, rule: CompiledDestinationRule, errors: &mut Vec<Error>) {
        if let Some(kept) = self
            .destination_rules
            .iter()
            .find(|r| r.host == rule.host && r.object.namespace == rule.object.namespace)
        {
            errors.push(Error::DuplicateDestinationRule {
                host: rule.host,
                kept: kept.object.clone(),
                ignored: rule.object,
            });
            return;
        }
        self.destination_rules.push(Arc::new(rule));
    }
}

impl RouteTable {
    /// The DestinationRule in force for `entry`'s host when a pod of `client` (its namespace)
    /// calls it, with its index in `destination_rules`; see the module docs for the order.
    pub(in crate::routing) fn destination_rule(
        &self,
        entry: &RegistryHost,
        client: Option<&str>,
    ) -> Option<(usize, &Arc<CompiledDestinationRule>)> {
        let applies = |rule: &CompiledDestinationRule| {
            host_matches(&rule.host, &entry.host)
                && (client == Some(&*rule.object.namespace) || rule.visibility.allows(client))
        };
        // In `namespace` (`None`: any): an exact host, else the longest wildcard;
        // `destination_rules` is in namespace/name order, so ties go to the first namespace.
        let most_specific = |namespace: Option<&str>| {
            self.destination_rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| {
                    applies(rule) && namespace.is_none_or(|ns| *rule.object.namespace == *ns)
                })
                .min_by_key(|(_, rule)| {
                    (
                        rule.host != entry.host,
                        std::cmp::Reverse(rule.host.0.len()),
                    )
                })
        };
        client
            .and_then(|client| most_specific(Some(client)))
            .or_else(|| most_specific(Some(&entry.namespace)))
            .or_else(|| most_specific(Some(&self.mesh.root_namespace)))
            .or_else(|| most_specific(None))
    }

    /// Whether a DestinationRule anywhere defines `subset` for `host` (the load-time check;
    /// which rule is in force depends on the client).
    pub(super) fn subset_defined(&self, host: &Host, subset: &str) -> bool {
        self.destination_rules
            .iter()
            .any(|r| host_matches(&r.host, host) && r.subsets.iter().any(|s| &*s.name == subset))
    }
}

pub(super) fn policy_level(
    p: &mut Problems,
    warnings: &mut Problems,
    field: &str,
    tp: &istio::TrafficPolicy,
) -> PolicyLevel {
    let parts = |p: &mut Problems,
                 warnings: &mut Problems,
                 at: &str,
                 lb: Option<&istio::LoadBalancerSettings>,
                 pool: Option<&istio::ConnectionPoolSettings>,
                 od: Option<&istio::OutlierDetection>,
                 tls: Option<&istio::ClientTlsSettings>| PolicyParts {
        load_balancer: lb
            .and_then(|lb| convert::load_balancer(p, &format!("{at}.loadBalancer"), lb)),
        connection_pool: pool
            .map(|c| convert::connection_pool(p, &format!("{at}.connectionPool"), c)),
        outlier_detection: od
            .map(|o| convert::outlier_detection(p, &format!("{at}.outlierDetection"), o)),
        tls: tls.and_then(|tls| upstream_tls(p, warnings, &format!("{at}.tls"), tls)),
    };
    let mut ports = Vec::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{field}.portLevelSettings[{i}]");
        let Some(number) = pl.port.as_ref().and_then(|s| s.number) else {
            p.add(format!("{at}.port.number"), MISSING);
            continue;
        };
        let Some(port) = convert::port(p, &format!("{at}.port.number"), number) else {
            continue;
        };
        ports.push((
            port,
            parts(
                p,
                warnings,
                &at,
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                pl.tls.as_ref(),
            ),
        ));
    }
    PolicyLevel {
        parts: parts(
            p,
            warnings,
            field,
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
            tp.tls.as_ref(),
        ),
        ports,
    }
}
