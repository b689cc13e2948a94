//! Clusters: each (host, subset, port) with its endpoints and the policy in force.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::compiled::*;
use super::service_entry::{dns_endpoints, entry_endpoints};
use crate::ids::EndpointAddr;
use crate::model::{Service, Workload};
use crate::routing::decision::{Cluster, ClusterEndpoint, ClusterKey, LoadBalancer};

impl RouteTable {
    pub(super) fn build_clusters(&mut self, workloads: &[Arc<Workload>]) {
        let workloads = Workloads::new(workloads);
        let workloads = &workloads;
        let mut clusters = HashMap::new();
        for entry in self.registry.values() {
            // Every rule that may be in force for this host, for some client.
            let rules = std::iter::once(None).chain(
                self.destination_rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| host_matches(&r.host, &entry.host))
                    .map(|(i, r)| Some((i, r.clone()))),
            );
            for rule in rules {
                let (rule_index, rule) = rule.unzip();
                self.add_clusters(&mut clusters, entry, rule_index, rule.as_ref(), workloads);
            }
        }
        self.clusters = clusters;
    }

    pub(super) fn add_clusters(
        &self,
        clusters: &mut HashMap<(ClusterKey, Option<usize>), Arc<Cluster>>,
        entry: &RegistryHost,
        rule_index: Option<usize>,
        rule: Option<&Arc<CompiledDestinationRule>>,
        workloads: &Workloads<'_>,
    ) {
        {
            let subsets: Vec<Option<&CompiledSubset>> = std::iter::once(None)
                .chain(rule.iter().flat_map(|r| r.subsets.iter().map(Some)))
                .collect();
            for port in &entry.ports {
                for subset in &subsets {
                    let key = ClusterKey {
                        host: entry.host.clone(),
                        subset: subset.map(|s| s.name.clone()),
                        port: port.port,
                    };
                    let labels = subset.map(|s| &s.labels);
                    let mut policy = rule
                        .as_ref()
                        .map(|r| r.policy(*subset, port.port))
                        .unwrap_or_default();
                    let mut dns = Vec::new();
                    let mut service_entry = None;
                    let (endpoints, service) = match &entry.source {
                        RegistrySource::Service(service) => (
                            service_endpoints(service, port, labels, workloads),
                            Some(service.clone()),
                        ),
                        RegistrySource::Entry {
                            object,
                            resolution,
                            endpoints,
                            ..
                        } => {
                            service_entry = Some(object.clone());
                            // NONE: dial what the app dialled.
                            let passthrough = *resolution == Resolution::None;
                            if passthrough && rule.is_none() {
                                policy.load_balancer = LoadBalancer::Passthrough;
                            }
                            if *resolution == Resolution::Dns {
                                dns = dns_endpoints(&entry.host, endpoints, port, labels);
                            }
                            let dialled =
                                entry_endpoints(endpoints, port, labels, &self.workloads_by_ip);
                            (if passthrough { Vec::new() } else { dialled }, None)
                        }
                    };
                    let version = subset
                        .and_then(|s| s.labels.get("version"))
                        .map(|v| Arc::from(v.as_str()))
                        .or_else(|| common_version(&endpoints));
                    clusters.insert(
                        (key.clone(), rule_index),
                        Arc::new(Cluster {
                            key,
                            protocol: port.protocol,
                            service,
                            endpoints,
                            dns,
                            service_entry,
                            policy,
                            version,
                        }),
                    );
                }
            }
        }
    }
}

pub(super) fn service_endpoints(
    service: &Service,
    port: &RegistryPort,
    subset: Option<&BTreeMap<String, String>>,
    workloads: &Workloads<'_>,
) -> Vec<ClusterEndpoint> {
    let Some(service_port) = &port.service_port else {
        return Vec::new();
    };
    let in_subset = |w: &Workload| {
        subset.is_none_or(|labels| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    };
    let mut endpoints: Vec<ClusterEndpoint> = match &service_port.endpoints {
        // From EndpointSlices: the ready ones. One without a known pod has no labels, so a
        // subset with labels never takes it, and no workload (no identity) is claimed for it.
        Some(endpoints) => endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                let workload = e
                    .workload
                    .as_ref()
                    .and_then(|uid| workloads.by_uid.get(uid.as_str()))
                    .map(|w| Arc::clone(w));
                let taken = match &workload {
                    Some(w) => in_subset(w),
                    None => subset.is_none_or(BTreeMap::is_empty),
                };
                taken.then(|| ClusterEndpoint {
                    addr: EndpointAddr::new(e.address, e.port),
                    workload,
                    weight: 1,
                })
            })
            .collect(),
        None => workloads
            .all
            .iter()
            .filter(|w| w.ready && crate::model::selects(service, w) && in_subset(w))
            .filter_map(|w| {
                Some(ClusterEndpoint {
                    addr: EndpointAddr::new(w.ip?, crate::model::target_port(service_port, w)?),
                    workload: Some(w.clone()),
                    weight: 1,
                })
            })
            .collect(),
    };
    endpoints.sort_by_key(|e| e.addr);
    // Several slices may list one address (as the controller moves it between them).
    endpoints.dedup_by_key(|e| e.addr);
    endpoints
}

/// The workloads, and by uid (how an EndpointSlice endpoint names its pod).
pub(super) struct Workloads<'a> {
    pub(super) all: &'a [Arc<Workload>],
    pub(super) by_uid: HashMap<&'a str, &'a Arc<Workload>>,
}

impl<'a> Workloads<'a> {
    pub(super) fn new(all: &'a [Arc<Workload>]) -> Self {
        Self {
            all,
            by_uid: all.iter().map(|w| (w.uid.as_str(), w)).collect(),
        }
    }
}

/// The `version` label all endpoints share, if they do.
pub(super) fn common_version(endpoints: &[ClusterEndpoint]) -> Option<Arc<str>> {
    let mut versions = endpoints
        .iter()
        .map(|e| e.workload.as_ref().and_then(|w| w.labels.get("version")));
    let first = versions.next()??;
    versions
        .all(|v| v == Some(first))
        .then(|| first.as_str().into())
}
