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
//! else one in the root namespace `istio-system`, else the others by namespace/name; within
//! each step an exact host beats the longest wildcard. Several rules for one host in one
//! namespace: the first in merge order (creationTimestamp, then name) wins; the others are
//! reported.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use http::StatusCode;

use super::Error;
use super::convert::{self, MISSING, Problems, Subnet, Visibility};
use super::decision::{
    Cluster, ClusterEndpoint, ClusterKey, ConnectionPool, Destination,
    DnsEndpoint, Host, HttpAction, HttpRoute, LoadBalancer, Mirror, ObjectRef,
    OutlierDetection, PortProtocol, RateLimit, Redirect, Rewrite,
    ServiceTarget, StringMatch, TrafficPolicy, WeightedDestination,
};
use crate::istio;
use crate::settings::{AccessLogOutput, MeshSettings, OutboundTrafficPolicy};
use crate::model::{MeshState, Service, Workload};

/// Istio's default `rootNamespace`: its DestinationRules apply to hosts of every namespace
/// that has none of its own.
pub(super) const ROOT_NAMESPACE: &str = "istio-system";

/// The compiled routing config of one [`MeshState`]; answers the data path's questions
/// through [`super::Routes`].
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(super) mesh: MeshSettings,
    pub(super) workloads_by_ip: HashMap<Ipv4Addr, Arc<Workload>>,
    /// Kubernetes Services and ServiceEntry hosts.
    pub(super) registry: BTreeMap<Host, RegistryHost>,
    /// Every target at an address, in registry order (Services by namespace/name, then
    /// ServiceEntries in merge order): the first one visible to the client names it.
    pub(super) by_addr: HashMap<SocketAddrV4, Vec<Arc<ServiceTarget>>>,
    /// ServiceEntry `addresses` given as CIDRs, with their ports.
    pub(super) by_subnet: Vec<(Subnet, u16, Arc<ServiceTarget>)>,
    pub(super) targets: HashMap<(Host, u16), Arc<ServiceTarget>>,
    /// Valid VirtualServices bound to the mesh, in merge order.
    pub(super) virtual_services: Vec<Arc<CompiledVirtualService>>,
    /// The valid DestinationRules, at most one per (namespace, host pattern), sorted by
    /// namespace/name; [`Self::destination_rule`] picks the one in force for a client.
    pub(super) destination_rules: Vec<Arc<CompiledDestinationRule>>,
    /// Every cluster under each rule that may be in force for its host (index into
    /// `destination_rules`; `None`: no rule).
    pub(super) clusters: HashMap<(ClusterKey, Option<usize>), Arc<Cluster>>,
    /// The implicit route of each registry host and port.
    pub(super) default_routes: HashMap<(Host, u16), Arc<HttpRoute>>,
    /// `RateLimitPolicy` with `service`: per host.
    pub(super) host_rate_limits: HashMap<Host, Arc<RateLimit>>,
}

#[derive(Debug)]
pub(super) struct RegistryHost {
    pub(super) host: Host,
    pub(super) namespace: String,
    /// A ServiceEntry's `exportTo`; Kubernetes Services are visible everywhere.
    pub(super) visibility: Visibility,
    pub(super) source: RegistrySource,
    pub(super) ports: Vec<RegistryPort>,
}

#[derive(Debug)]
pub(super) enum RegistrySource {
    Service(Arc<Service>),
    Entry {
        object: ObjectRef,
        resolution: Resolution,
        endpoints: Vec<EntryEndpoint>,
        has_addresses: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resolution {
    None,
    Static,
    Dns,
}

#[derive(Debug)]
pub(super) struct EntryEndpoint {
    pub(super) address: Option<Ipv4Addr>,
    /// A hostname `address` (resolution DNS), resolved by the proxy.
    pub(super) hostname: Option<Arc<str>>,
    pub(super) ports: BTreeMap<String, u16>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) weight: u32,
}

#[derive(Debug)]
pub(super) struct RegistryPort {
    pub(super) port: u16,
    pub(super) name: Option<String>,
    pub(super) protocol: PortProtocol,
    pub(super) service_port: Option<crate::model::ServicePort>,
    pub(super) target_port: Option<u16>,
}

#[derive(Debug)]
pub(super) struct CompiledVirtualService {
    pub(super) object: ObjectRef,
    pub(super) hosts: Vec<Host>,
    pub(super) visibility: Visibility,
    pub(super) http: Vec<CompiledHttpRoute>,
    pub(super) tcp: Vec<CompiledL4Route>,
    pub(super) tls: Vec<CompiledL4Route>,
}

#[derive(Debug)]
pub(super) struct CompiledHttpRoute {
    pub(super) index: usize,
    /// Empty: matches every request.
    pub(super) matches: Vec<HttpMatch>,
    pub(super) route: Arc<HttpRoute>,
}

#[derive(Debug)]
pub(super) struct HttpMatch {
    pub(super) name: Option<String>,
    pub(super) uri: Option<StringMatch>,
    pub(super) scheme: Option<StringMatch>,
    pub(super) method: Option<StringMatch>,
    pub(super) authority: Option<StringMatch>,
    pub(super) headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub(super) without_headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub(super) query_params: Vec<(String, Option<StringMatch>)>,
    pub(super) port: Option<u16>,
    pub(super) source_labels: BTreeMap<String, String>,
    pub(super) source_namespace: Option<String>,
    pub(super) ignore_uri_case: bool,
    /// The route with `Rewrite::matched_prefix` set, when this block's `uri` is a prefix and
    /// the route rewrites the uri.
    pub(super) prefix_route: Option<Arc<HttpRoute>>,
}

#[derive(Debug)]
pub(super) struct CompiledL4Route {
    pub(super) index: usize,
    pub(super) name: Arc<str>,
    pub(super) matches: Vec<L4Match>,
    pub(super) destinations: Vec<WeightedDestination>,
}

#[derive(Debug)]
pub(super) struct L4Match {
    pub(super) sni_hosts: Vec<String>,
    pub(super) destination_subnets: Vec<Subnet>,
    pub(super) port: Option<u16>,
    pub(super) source_labels: BTreeMap<String, String>,
    pub(super) source_namespace: Option<String>,
}

#[derive(Debug)]
pub(super) struct CompiledDestinationRule {
    pub(super) object: ObjectRef,
    /// `spec.host`, made fully qualified (may be a wildcard).
    pub(super) host: Host,
    pub(super) visibility: Visibility,
    pub(super) top: PolicyLevel,
    pub(super) subsets: Vec<CompiledSubset>,
}

#[derive(Debug)]
pub(super) struct CompiledSubset {
    pub(super) name: Arc<str>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) policy: PolicyLevel,
}

/// One level's `trafficPolicy` (top or subset): what it sets, and its port-level overrides.
#[derive(Clone, Debug, Default)]
pub(super) struct PolicyLevel {
    pub(super) parts: PolicyParts,
    pub(super) ports: Vec<(u16, PolicyParts)>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct PolicyParts {
    pub(super) load_balancer: Option<LoadBalancer>,
    pub(super) connection_pool: Option<ConnectionPool>,
    pub(super) outlier_detection: Option<OutlierDetection>,
}

impl PolicyParts {
    fn overridden_by(&self, other: &Self) -> Self {
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
        }
    }
}

impl PolicyLevel {
    fn at_port(&self, port: u16) -> PolicyParts {
        self.ports.iter().find(|(p, _)| *p == port).map_or_else(
            || self.parts.clone(),
            |(_, parts)| self.parts.overridden_by(parts),
        )
    }
}

impl CompiledDestinationRule {
    /// Top level, then the subset's level, each with its port-level settings for `port`.
    pub(super) fn policy(&self, subset: Option<&CompiledSubset>, port: u16) -> TrafficPolicy {
        let mut parts = self.top.at_port(port);
        if let Some(subset) = subset {
            parts = parts.overridden_by(&subset.policy.at_port(port));
        }
        TrafficPolicy {
            load_balancer: parts.load_balancer.unwrap_or_default(),
            connection_pool: parts.connection_pool.unwrap_or_default(),
            outlier_detection: parts.outlier_detection,
            source: Some(self.object.clone()),
        }
    }
}

fn object_ref(kind: &'static str, metadata: &istio::Metadata) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: metadata.namespace.as_str().into(),
        name: metadata.name.as_str().into(),
    }
}

/// Every problem of one object, as errors that drop it.
fn invalid(object: &ObjectRef, problems: Problems) -> impl Iterator<Item = Error> + '_ {
    problems
        .list
        .into_iter()
        .map(|(field, message)| Error::Invalid {
            object: object.clone(),
            field,
            message,
        })
}

/// Orders objects that share a host: creationTimestamp (absent first), namespace, name.
fn merge_order<S>(objects: &[istio::Resource<S>]) -> Vec<&istio::Resource<S>> {
    let mut sorted: Vec<_> = objects.iter().collect();
    sorted.sort_by(|a, b| {
        (
            &a.metadata.creation_timestamp,
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                &b.metadata.creation_timestamp,
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    sorted
}

impl RouteTable {
    /// Compiles `state`. Returns the table and every problem found; an invalid object is left
    /// out whole, the rest applies.
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
        let mut errors = Vec::new();
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
        for rule in merge_order(&state.destination_rules) {
            table.add_destination_rule(rule, &mut errors);
        }
        // Lookups fall back to "the others by namespace/name".
        table.destination_rules.sort_by(|a, b| {
            (&a.object.namespace, &a.object.name).cmp(&(&b.object.namespace, &b.object.name))
        });
        table.build_clusters(&workloads);
        let rate_limits = table.rate_limits(state, &mut errors);
        for vs in merge_order(&state.virtual_services) {
            table.add_virtual_service(vs, &rate_limits, &mut errors);
        }
        table.build_default_routes();
        (table, errors)
    }

    fn add_services(&mut self, state: &MeshState) {
        let mut services: Vec<Arc<Service>> =
            state.services.iter().cloned().map(Arc::new).collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for service in services {
            let host = Host(service.hostname().into());
            let ports: Vec<RegistryPort> = service
                .ports
                .iter()
                .filter(|p| p.protocol.eq_ignore_ascii_case("TCP"))
                .map(|p| RegistryPort {
                    port: p.port,
                    name: p.name.clone(),
                    protocol: convert::service_port_protocol(
                        p.name.as_deref(),
                        p.app_protocol.as_deref(),
                    ),
                    service_port: Some(p.clone()),
                    target_port: None,
                })
                .collect();
            for port in &ports {
                let target = Arc::new(ServiceTarget {
                    host: host.clone(),
                    port: port.port,
                    dst: SocketAddrV4::new(
                        service.cluster_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        port.port,
                    ),
                    protocol: port.protocol,
                    service: Some(service.clone()),
                    service_entry: None,
                });
                if let Some(ip) = service.cluster_ip {
                    // A duplicate ClusterIP:port is reported by `MeshIndex`; the first Service
                    // (by namespace/name) keeps it there and here alike.
                    self.by_addr
                        .entry(SocketAddrV4::new(ip, port.port))
                        .or_default()
                        .push(target.clone());
                }
                self.targets.insert((host.clone(), port.port), target);
            }
            self.registry.insert(
                host.clone(),
                RegistryHost {
                    host,
                    namespace: service.namespace.clone(),
                    visibility: Visibility::All,
                    source: RegistrySource::Service(service),
                    ports,
                },
            );
        }
    }

    fn add_service_entry(&mut self, entry: &istio::ServiceEntry, errors: &mut Vec<Error>) {
        let object = object_ref("ServiceEntry", &entry.metadata);
        let spec = &entry.spec;
        let mut p = Problems::default();
        if spec.hosts.is_empty() {
            p.add("spec.hosts", MISSING);
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if host.is_empty() || host == "*" || host.contains('/') {
                p.add(
                    format!("spec.hosts[{i}]"),
                    format!("{host:?} is not a host name (a wildcard must be like *.example.com)"),
                );
            }
        }
        let subnets: Vec<Subnet> = spec
            .addresses
            .iter()
            .enumerate()
            .filter_map(|(i, a)| convert::subnet(&mut p, &format!("spec.addresses[{i}]"), a))
            .collect();
        if spec.ports.is_empty() {
            p.add("spec.ports", MISSING);
        }
        let mut ports = Vec::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            let Some(number) = port.number else {
                p.add(format!("{at}.number"), MISSING);
                continue;
            };
            let number = convert::port(&mut p, &format!("{at}.number"), number);
            let protocol = convert::service_entry_protocol(
                &mut p,
                &format!("{at}.protocol"),
                port.protocol.as_deref(),
            );
            let target_port = port
                .target_port
                .and_then(|t| convert::port(&mut p, &format!("{at}.targetPort"), t));
            if let (Some(number), Some(protocol)) = (number, protocol) {
                ports.push(RegistryPort {
                    port: number,
                    name: port.name.clone(),
                    protocol,
                    service_port: None,
                    target_port,
                });
            }
        }
        let resolution = match spec.resolution.as_deref() {
            None | Some("NONE") => Some(Resolution::None),
            Some("STATIC") => Some(Resolution::Static),
            Some("DNS" | "DNS_ROUND_ROBIN") => Some(Resolution::Dns),
            Some(other) => {
                p.add("spec.resolution", format!("unknown resolution {other:?}: expected NONE, STATIC, DNS or DNS_ROUND_ROBIN"));
                None
            }
        };
        match spec.location.as_deref() {
            None | Some("MESH_EXTERNAL" | "MESH_INTERNAL") => {}
            Some(other) => p.add(
                "spec.location",
                format!("unknown location {other:?}: expected MESH_EXTERNAL or MESH_INTERNAL"),
            ),
        }
        if spec.workload_selector.is_some() {
            p.add(
                "spec.workloadSelector",
                "workloadSelector is not supported in local mode; list the endpoints instead",
            );
        }
        let mut endpoints = Vec::new();
        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            let at = format!("spec.endpoints[{i}]");
            let mut hostname = None;
            let address = match (&endpoint.address, resolution) {
                (None, _) => {
                    p.add(format!("{at}.address"), MISSING);
                    None
                }
                (Some(a), _) if a.contains(':') => {
                    p.add(
                        format!("{at}.address"),
                        format!("{a:?} is IPv6 or a unix socket; shunt dials IPv4 only"),
                    );
                    None
                }
                (Some(a), Some(Resolution::Static)) => match a.parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        p.add(
                            format!("{at}.address"),
                            format!("{a:?} is not an IPv4 address, which resolution STATIC needs"),
                        );
                        None
                    }
                },
                (Some(a), Some(Resolution::Dns)) => match a.parse() {
                    Ok(ip) => Some(ip),
                    Err(_) if is_dns_name(a) => {
                        hostname = Some(Arc::from(a.to_ascii_lowercase()));
                        None
                    }
                    Err(_) => {
                        p.add(
                            format!("{at}.address"),
                            format!(
                                "{a:?} is neither an IPv4 address nor a DNS name, which \
                                 resolution DNS needs"
                            ),
                        );
                        None
                    }
                },
                // NONE: the endpoint is not dialled (the app's own destination is).
                (Some(a), _) => a.parse().ok(),
            };
            let ports = endpoint
                .ports
                .iter()
                .filter_map(|(name, port)| {
                    Some((
                        name.clone(),
                        convert::port(&mut p, &format!("{at}.ports.{name}"), *port)?,
                    ))
                })
                .collect();
            let weight = endpoint
                .weight
                .and_then(|w| {
                    convert::int_in(&mut p, &format!("{at}.weight"), w, 0, i64::from(u32::MAX))
                })
                .unwrap_or(1);
            endpoints.push(EntryEndpoint {
                address,
                hostname,
                ports,
                labels: endpoint.labels.clone(),
                weight,
            });
        }
        if resolution == Some(Resolution::Static) && spec.endpoints.is_empty() {
            p.add(
                "spec.endpoints",
                "resolution STATIC needs at least one endpoint",
            );
        }
        // Without endpoints the proxy resolves the hosts themselves, which a wildcard cannot
        // be (Istio's validation rejects it too).
        if resolution == Some(Resolution::Dns) && spec.endpoints.is_empty() {
            for (i, host) in spec.hosts.iter().enumerate() {
                if host.starts_with('*') {
                    p.add(
                        format!("spec.hosts[{i}]"),
                        format!(
                            "{host:?} is a wildcard, which resolution DNS cannot resolve: hosts \
                             must be FQDNs when no endpoints are given (list endpoints, or use \
                             resolution NONE)"
                        ),
                    );
                }
            }
        }
        let visibility = convert::export_to(
            &mut p,
            "spec.exportTo",
            &spec.export_to,
            &entry.metadata.namespace,
        );
        if !p.is_empty() {
            errors.extend(invalid(&object, p));
            return;
        }
        let Some(resolution) = resolution else { return };
        let endpoints = Arc::new(endpoints);
        for (i, host) in spec.hosts.iter().enumerate() {
            let host = Host(host.as_str().into());
            if let Some(existing) = self.registry.get(&host) {
                errors.push(Error::Warning {
                    object: object.clone(),
                    field: format!("spec.hosts[{i}]"),
                    message: format!("host {host} is already defined by {}; this host of the ServiceEntry is ignored", existing.describe()),
                });
                continue;
            }
            let ports_here: Vec<RegistryPort> = ports
                .iter()
                .map(|p| RegistryPort {
                    port: p.port,
                    name: p.name.clone(),
                    protocol: p.protocol,
                    service_port: None,
                    target_port: p.target_port,
                })
                .collect();
            for port in &ports_here {
                let target = Arc::new(ServiceTarget {
                    host: host.clone(),
                    port: port.port,
                    dst: SocketAddrV4::new(
                        subnets.first().map_or(Ipv4Addr::UNSPECIFIED, |s| s.addr),
                        port.port,
                    ),
                    protocol: port.protocol,
                    service: None,
                    service_entry: Some(object.clone()),
                });
                // An address names the entry's first host, as Istio does.
                if i == 0 {
                    for subnet in &subnets {
                        if subnet.prefix == 32 {
                            self.by_addr
                                .entry(SocketAddrV4::new(subnet.addr, port.port))
                                .or_default()
                                .push(target.clone());
                        } else {
                            self.by_subnet.push((*subnet, port.port, target.clone()));
                        }
                    }
                }
                self.targets.insert((host.clone(), port.port), target);
            }
            self.registry.insert(
                host.clone(),
                RegistryHost {
                    host,
                    namespace: entry.metadata.namespace.clone(),
                    visibility: visibility.clone(),
                    source: RegistrySource::Entry {
                        object: object.clone(),
                        resolution,
                        endpoints: endpoints.iter().map(EntryEndpoint::clone_parts).collect(),
                        has_addresses: !subnets.is_empty(),
                    },
                    ports: ports_here,
                },
            );
        }
    }

    fn add_destination_rule(&mut self, rule: &istio::DestinationRule, errors: &mut Vec<Error>) {
        let object = object_ref("DestinationRule", &rule.metadata);
        let spec = &rule.spec;
        let mut p = Problems::default();
        if spec.host.is_empty() {
            p.add("spec.host", MISSING);
        }
        let top = spec
            .traffic_policy
            .as_ref()
            .map(|tp| policy_level(&mut p, "spec.trafficPolicy", tp))
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
                .map(|tp| policy_level(&mut p, &format!("{at}.trafficPolicy"), tp))
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
        let host = self.resolve_host(&spec.host, &rule.metadata.namespace);
        if let Some(kept) = self
            .destination_rules
            .iter()
            .find(|r| r.host == host && r.object.namespace == object.namespace)
        {
            errors.push(Error::DuplicateDestinationRule {
                host,
                kept: kept.object.clone(),
                ignored: object,
            });
            return;
        }
        self.destination_rules
            .push(Arc::new(CompiledDestinationRule {
                object,
                host,
                visibility,
                top,
                subsets,
            }));
    }

    /// A host as written in an object of `namespace`, made fully qualified: `cart` is
    /// `cart.<namespace>.svc.cluster.local`; `cart.shop` and `cart.shop.svc` name the Service
    /// `cart` of `shop` when there is one; anything else is taken as written.
    pub(super) fn resolve_host(&self, host: &str, namespace: &str) -> Host {
        if host == "*" || host.starts_with("*.") {
            return Host(host.into());
        }
        if !host.contains('.') {
            return Host(format!("{host}.{namespace}.{}", convert::DOMAIN_SUFFIX).into());
        }
        let literal = Host(host.into());
        if self.registry.contains_key(&literal) {
            return literal;
        }
        let dots = host.matches('.').count();
        let qualified = if dots == 1 {
            Some(format!("{host}.{}", convert::DOMAIN_SUFFIX))
        } else if dots == 2 && host.ends_with(".svc") {
            Some(format!("{host}.cluster.local"))
        } else {
            None
        };
        match qualified.map(|q| Host(q.into())) {
            Some(q) if self.registry.contains_key(&q) => q,
            _ => literal,
        }
    }

    /// The DestinationRule in force for `entry`'s host when a pod of `client` (its namespace)
    /// calls it, with its index in `destination_rules`; see the module docs for the order.
    pub(super) fn destination_rule(
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
            .or_else(|| most_specific(Some(ROOT_NAMESPACE)))
            .or_else(|| most_specific(None))
    }

    /// Whether a DestinationRule anywhere defines `subset` for `host` (the load-time check;
    /// which rule is in force depends on the client).
    fn subset_defined(&self, host: &Host, subset: &str) -> bool {
        self.destination_rules
            .iter()
            .any(|r| host_matches(&r.host, host) && r.subsets.iter().any(|s| &*s.name == subset))
    }

    fn build_clusters(&mut self, workloads: &[Arc<Workload>]) {
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

    fn add_clusters(
        &self,
        clusters: &mut HashMap<(ClusterKey, Option<usize>), Arc<Cluster>>,
        entry: &RegistryHost,
        rule_index: Option<usize>,
        rule: Option<&Arc<CompiledDestinationRule>>,
        workloads: &[Arc<Workload>],
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

    fn rate_limits(
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

    fn add_virtual_service(
        &mut self,
        vs: &istio::VirtualService,
        rate_limits: &HashMap<(String, String, String), Arc<RateLimit>>,
        errors: &mut Vec<Error>,
    ) {
        let object = object_ref("VirtualService", &vs.metadata);
        let namespace = vs.metadata.namespace.as_str();
        let spec = &vs.spec;
        let mut p = Problems::default();
        if spec.hosts.is_empty() {
            p.add("spec.hosts", MISSING);
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if host.is_empty() {
                p.add(
                    format!("spec.hosts[{i}]"),
                    "expected a host name, got an empty string",
                );
            }
        }
        let visibility = convert::export_to(&mut p, "spec.exportTo", &spec.export_to, namespace);
        let mut http = Vec::new();
        for (i, route) in spec.http.iter().enumerate() {
            let name = format!("{}.{i}", vs.metadata.name);
            let limit = route.name.as_ref().and_then(|n| {
                rate_limits.get(&(namespace.to_owned(), vs.metadata.name.clone(), n.clone()))
            });
            if let Some(compiled) = self.http_route(
                &mut p,
                &format!("spec.http[{i}]"),
                route,
                &object,
                name,
                limit,
            ) {
                http.push(CompiledHttpRoute {
                    index: i,
                    ..compiled
                });
            }
        }
        let tcp = spec
            .tcp
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        l4_attrs(
                            &[],
                            &m.destination_subnets,
                            m.port,
                            &m.source_labels,
                            &m.gateways,
                            m.source_namespace.as_ref(),
                        )
                    })
                    .collect();
                self.l4_route(
                    &mut p,
                    &format!("spec.tcp[{i}]"),
                    (i, &format!("{}.tcp.{i}", vs.metadata.name)),
                    matches,
                    &r.route,
                    namespace,
                )
            })
            .collect();
        let tls = spec
            .tls
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                if r.matches.is_empty() {
                    p.add(
                        format!("spec.tls[{i}].match"),
                        "a tls route needs at least one match with sniHosts",
                    );
                }
                for (j, m) in r.matches.iter().enumerate() {
                    if m.sni_hosts.is_empty() {
                        p.add(format!("spec.tls[{i}].match[{j}].sniHosts"), MISSING);
                    }
                }
                let matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        l4_attrs(
                            &m.sni_hosts,
                            &m.destination_subnets,
                            m.port,
                            &m.source_labels,
                            &m.gateways,
                            m.source_namespace.as_ref(),
                        )
                    })
                    .collect();
                self.l4_route(
                    &mut p,
                    &format!("spec.tls[{i}]"),
                    (i, &format!("{}.tls.{i}", vs.metadata.name)),
                    matches,
                    &r.route,
                    namespace,
                )
            })
            .collect::<Vec<_>>();
        if !p.is_empty() {
            errors.extend(invalid(&object, p));
            return;
        }
        // Only sidecar traffic is shunt's: routes bound only to gateways do not apply.
        if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
            tracing::debug!(virtual_service = %object, gateways = ?spec.gateways, "bound only to gateways; ignored for mesh traffic");
            return;
        }
        self.check_subsets(vs, &object, errors);
        let hosts = spec
            .hosts
            .iter()
            .map(|h| self.resolve_host(h, namespace))
            .collect();
        self.virtual_services.push(Arc::new(CompiledVirtualService {
            object,
            hosts,
            visibility,
            http,
            tcp,
            tls,
        }));
    }

    /// Warns about every destination whose subset no DestinationRule defines (Istio's
    /// analyzer: IST0101 ReferencedResourceNotFound). The VirtualService still applies; a
    /// request routed there gets 503 NC.
    fn check_subsets(
        &self,
        vs: &istio::VirtualService,
        object: &ObjectRef,
        errors: &mut Vec<Error>,
    ) {
        let spec = &vs.spec;
        let mut referenced: Vec<(String, &istio::Destination)> = Vec::new();
        for (i, route) in spec.http.iter().enumerate() {
            for (j, r) in route.route.iter().enumerate() {
                referenced.push((
                    format!("spec.http[{i}].route[{j}].destination"),
                    &r.destination,
                ));
            }
            if let Some(mirror) = &route.mirror {
                referenced.push((format!("spec.http[{i}].mirror"), mirror));
            }
            for (k, m) in route.mirrors.iter().enumerate() {
                referenced.push((
                    format!("spec.http[{i}].mirrors[{k}].destination"),
                    &m.destination,
                ));
            }
        }
        let l4 = spec
            .tcp
            .iter()
            .map(|r| ("tcp", &r.route))
            .enumerate()
            .chain(spec.tls.iter().map(|r| ("tls", &r.route)).enumerate());
        for (i, (section, routes)) in l4 {
            for (j, r) in routes.iter().enumerate() {
                referenced.push((
                    format!("spec.{section}[{i}].route[{j}].destination"),
                    &r.destination,
                ));
            }
        }
        for (field, destination) in referenced {
            let Some(subset) = destination.subset.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let host = self.resolve_host(&destination.host, &vs.metadata.namespace);
            if !self.subset_defined(&host, subset) {
                errors.push(Error::Warning {
                    object: object.clone(),
                    field: format!("{field}.subset"),
                    message: format!(
                        "referenced host+subset in destinationrule not found: \"{host}+{subset}\" \
                         (IST0101: no DestinationRule for {host} defines subset {subset:?}); \
                         requests routed there get 503 NC until one does"
                    ),
                });
            }
        }
    }

    fn destination(
        &self,
        p: &mut Problems,
        field: &str,
        d: &istio::Destination,
        namespace: &str,
    ) -> Option<Destination> {
        if d.host.is_empty() {
            p.add(format!("{field}.host"), MISSING);
            return None;
        }
        let port = match d.port.as_ref().and_then(|s| s.number) {
            Some(n) => Some(convert::port(p, &format!("{field}.port.number"), n)?),
            None => None,
        };
        Some(Destination {
            host: self.resolve_host(&d.host, namespace),
            subset: d.subset.as_deref().filter(|s| !s.is_empty()).map(Arc::from),
            port,
        })
    }

    /// Weighted destinations; with more than one, the weights must sum to 100 (Istio).
    fn weighted(
        &self,
        p: &mut Problems,
        field: &str,
        routes: &[(
            Option<&istio::Destination>,
            Option<i64>,
            Option<&istio::Headers>,
        )],
        namespace: &str,
    ) -> Vec<WeightedDestination> {
        let mut out = Vec::new();
        let mut sum: i64 = 0;
        for (i, (destination, weight, headers)) in routes.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let weight = match weight {
                Some(w) => {
                    convert::int_in::<u32>(p, &format!("{at}.weight"), *w, 0, 100).unwrap_or(0)
                }
                None => 0,
            };
            sum += i64::from(weight);
            let Some(destination) = destination
                .and_then(|d| self.destination(p, &format!("{at}.destination"), d, namespace))
            else {
                if destination.is_none() {
                    p.add(format!("{at}.destination"), MISSING);
                }
                continue;
            };
            out.push(WeightedDestination {
                destination,
                weight,
                request_headers: convert::header_ops(
                    p,
                    &format!("{at}.headers.request"),
                    headers.and_then(|h| h.request.as_ref()),
                ),
                response_headers: convert::header_ops(
                    p,
                    &format!("{at}.headers.response"),
                    headers.and_then(|h| h.response.as_ref()),
                ),
            });
        }
        if routes.len() > 1 && sum != 100 {
            p.add(
                field,
                format!("the weights of several destinations must sum to 100, got {sum}"),
            );
        }
        if let [only] = out.as_mut_slice() {
            only.weight = 100;
        }
        out
    }

    fn l4_route(
        &self,
        p: &mut Problems,
        field: &str,
        (index, name): (usize, &str),
        matches: Vec<L4Attrs<'_>>,
        route: &[istio::RouteDestination],
        namespace: &str,
    ) -> Option<CompiledL4Route> {
        let before = p.list.len();
        if route.is_empty() {
            p.add(format!("{field}.route"), MISSING);
        }
        let matches = matches
            .into_iter()
            .enumerate()
            .filter_map(|(j, m)| l4_match(p, &format!("{field}.match[{j}]"), &m))
            .collect();
        let routes: Vec<_> = route
            .iter()
            .map(|r| (Some(&r.destination), r.weight, None))
            .collect();
        let destinations = self.weighted(p, &format!("{field}.route"), &routes, namespace);
        (p.list.len() == before).then(|| CompiledL4Route {
            index,
            name: name.into(),
            matches,
            destinations,
        })
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one field after the other, in Istio's order"
    )]
    fn http_route(
        &self,
        p: &mut Problems,
        field: &str,
        route: &istio::HttpRoute,
        object: &ObjectRef,
        default_name: String,
        rate_limit: Option<&Arc<RateLimit>>,
    ) -> Option<CompiledHttpRoute> {
        let before = p.list.len();
        let namespace = &*object.namespace;
        let actions = usize::from(!route.route.is_empty())
            + usize::from(route.redirect.is_some())
            + usize::from(route.direct_response.is_some());
        if route.delegate.is_some() {
            p.add(
                format!("{field}.delegate"),
                "delegate is a gateway feature; shunt does not support it",
            );
        } else if actions != 1 {
            p.add(
                field,
                "set exactly one of route, redirect and directResponse",
            );
        }
        let action = if !route.route.is_empty() {
            let routes: Vec<_> = route
                .route
                .iter()
                .map(|r| (Some(&r.destination), r.weight, r.headers.as_ref()))
                .collect();
            HttpAction::Forward(self.weighted(p, &format!("{field}.route"), &routes, namespace))
        } else if let Some(redirect) = &route.redirect {
            let at = format!("{field}.redirect");
            let status = match redirect.redirect_code {
                None => StatusCode::MOVED_PERMANENTLY,
                Some(code) => match code {
                    301 | 302 | 303 | 307 | 308 => {
                        StatusCode::from_u16(u16::try_from(code).unwrap_or(301))
                            .unwrap_or(StatusCode::MOVED_PERMANENTLY)
                    }
                    other => {
                        p.add(
                            format!("{at}.redirectCode"),
                            format!("expected 301, 302, 303, 307 or 308, got {other}"),
                        );
                        StatusCode::MOVED_PERMANENTLY
                    }
                },
            };
            HttpAction::Redirect(Redirect {
                uri: redirect.uri.as_deref().map(Arc::from),
                authority: redirect.authority.as_deref().map(Arc::from),
                port: redirect
                    .port
                    .and_then(|n| convert::port(p, &format!("{at}.port"), n)),
                scheme: redirect.scheme.as_deref().map(Arc::from),
                status,
            })
        } else if let Some(direct) = &route.direct_response {
            let at = format!("{field}.directResponse");
            let status = match direct.status {
                None => {
                    p.add(format!("{at}.status"), MISSING);
                    StatusCode::OK
                }
                Some(s) => convert::int_in::<u16>(p, &format!("{at}.status"), s, 200, 599)
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::OK),
            };
            let body = direct
                .body
                .as_ref()
                .and_then(|body| match (&body.string, &body.bytes) {
                    (Some(s), None) => Some(bytes::Bytes::from(s.clone())),
                    (None, Some(b)) => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map(bytes::Bytes::from)
                            .map_err(|e| {
                                p.add(format!("{at}.body.bytes"), format!("not base64: {e}"))
                            })
                            .ok()
                    }
                    _ => {
                        p.add(format!("{at}.body"), "set exactly one of string and bytes");
                        None
                    }
                });
            HttpAction::DirectResponse { status, body }
        } else {
            HttpAction::Forward(Vec::new())
        };
        let timeout = convert::opt_duration(p, &format!("{field}.timeout"), route.timeout.as_ref())
            .filter(|d| !d.is_zero());
        let retries = convert::retries(p, &format!("{field}.retries"), route.retries.as_ref());
        let fault = route
            .fault
            .as_ref()
            .and_then(|f| convert::fault(p, &format!("{field}.fault"), f));
        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            let percentage = convert::percent_or_legacy(
                p,
                &format!("{field}.mirrorPercentage"),
                route.mirror_percentage.as_ref(),
                &format!("{field}.mirrorPercent"),
                route.mirror_percent,
            );
            if let (Some(destination), Some(percentage)) = (
                self.destination(p, &format!("{field}.mirror"), mirror, namespace),
                percentage,
            ) {
                mirrors.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
        for (i, mirror) in route.mirrors.iter().enumerate() {
            let at = format!("{field}.mirrors[{i}]");
            let percentage = convert::percent_or_legacy(
                p,
                &format!("{at}.percentage"),
                mirror.percentage.as_ref(),
                "",
                None,
            );
            if let (Some(destination), Some(percentage)) = (
                self.destination(
                    p,
                    &format!("{at}.destination"),
                    &mirror.destination,
                    namespace,
                ),
                percentage,
            ) {
                mirrors.push(Mirror {
                    destination,
                    percentage,
                });
            }
        }
        let cors = route
            .cors_policy
            .as_ref()
            .map(|c| convert::cors(p, &format!("{field}.corsPolicy"), c));
        let headers = route.headers.as_ref();
        let request_headers = convert::header_ops(
            p,
            &format!("{field}.headers.request"),
            headers.and_then(|h| h.request.as_ref()),
        );
        let response_headers = convert::header_ops(
            p,
            &format!("{field}.headers.response"),
            headers.and_then(|h| h.response.as_ref()),
        );
        let rewrite = route.rewrite.as_ref().and_then(|rw| {
            let at = format!("{field}.rewrite");
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                p.add(&at, "set only one of uri and uriRegexRewrite");
                return None;
            }
            let uri_regex = match &rw.uri_regex_rewrite {
                None => None,
                Some(rr) => {
                    let pattern = rr.pattern.as_deref().unwrap_or_default();
                    if pattern.is_empty() {
                        p.add(format!("{at}.uriRegexRewrite.match"), MISSING);
                        return None;
                    }
                    let re = regex::Regex::new(pattern)
                        .map_err(|e| {
                            p.add(
                                format!("{at}.uriRegexRewrite.match"),
                                format!("regex {pattern:?} does not compile: {e}"),
                            )
                        })
                        .ok()?;
                    // Kept in RE2's `\1` form, as `Rewrite::uri_regex` says; the data path
                    // expands it.
                    Some((re, Arc::from(rr.rewrite.as_deref().unwrap_or_default())))
                }
            };
            Some(Rewrite {
                uri: rw.uri.as_deref().map(Arc::from),
                authority: rw
                    .authority
                    .as_deref()
                    .and_then(|a| convert::header_value(p, &format!("{at}.authority"), a)),
                uri_regex,
                matched_prefix: None,
            })
        });
        let mut matches = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            if let Some(compiled) = http_match(p, &format!("{field}.match[{j}]"), m) {
                matches.push(compiled);
            }
        }
        if p.list.len() != before {
            return None;
        }
        let compiled = Arc::new(HttpRoute {
            name: route.name.clone().unwrap_or(default_name).into(),
            virtual_service: Some(object.clone()),
            action,
            timeout,
            retries,
            fault,
            mirrors,
            cors,
            request_headers,
            response_headers,
            rewrite,
            rate_limit: rate_limit.cloned(),
        });
        for m in &mut matches {
            if let (Some(StringMatch::Prefix(prefix)), Some(rewrite)) = (&m.uri, &compiled.rewrite)
                && rewrite.uri.is_some()
            {
                let mut with_prefix = (*compiled).clone();
                with_prefix.rewrite = Some(Rewrite {
                    matched_prefix: Some(prefix.clone()),
                    ..rewrite.clone()
                });
                m.prefix_route = Some(Arc::new(with_prefix));
            }
        }
        Some(CompiledHttpRoute {
            index: 0,
            matches,
            route: compiled,
        })
    }

    fn build_default_routes(&mut self) {
        for (host, port) in self.targets.keys() {
            let route = default_route(
                Destination {
                    host: host.clone(),
                    subset: None,
                    port: Some(*port),
                },
                self.host_rate_limits.get(host).cloned(),
            );
            self.default_routes
                .insert((host.clone(), *port), Arc::new(route));
        }
    }

    #[must_use]
    pub fn mesh_settings(&self) -> &MeshSettings {
        &self.mesh
    }
}

impl EntryEndpoint {
    fn clone_parts(&self) -> Self {
        Self {
            address: self.address,
            hostname: self.hostname.clone(),
            ports: self.ports.clone(),
            labels: self.labels.clone(),
            weight: self.weight,
        }
    }
}

impl RegistryHost {
    pub(super) fn describe(&self) -> String {
        match &self.source {
            RegistrySource::Service(s) => format!("Service {}/{}", s.namespace, s.name),
            RegistrySource::Entry { object, .. } => object.to_string(),
        }
    }

    pub(super) fn port(&self, port: u16) -> Option<&RegistryPort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The route of a host without a VirtualService (or of an address nothing names): forward
/// to it, with Istio's default retries.
pub(super) fn default_route(
    destination: Destination,
    rate_limit: Option<Arc<RateLimit>>,
) -> HttpRoute {
    HttpRoute {
        name: "default".into(),
        virtual_service: None,
        action: HttpAction::Forward(vec![WeightedDestination {
            destination,
            weight: 100,
            request_headers: Default::default(),
            response_headers: Default::default(),
        }]),
        timeout: None,
        retries: convert::default_retry_policy(),
        fault: None,
        mirrors: Vec::new(),
        cors: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        rewrite: None,
        rate_limit,
    }
}

/// Whether a host pattern (`*`, `*.example.com` or a host) covers `host`.
pub(super) fn host_matches(pattern: &Host, host: &Host) -> bool {
    let pattern = &*pattern.0;
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.0.ends_with(suffix) && host.0.len() > suffix.len(),
        None => pattern == &*host.0,
    }
}

fn policy_level(p: &mut Problems, field: &str, tp: &istio::TrafficPolicy) -> PolicyLevel {
    let parts = |p: &mut Problems,
                 at: &str,
                 lb: Option<&istio::LoadBalancerSettings>,
                 pool: Option<&istio::ConnectionPoolSettings>,
                 od: Option<&istio::OutlierDetection>| PolicyParts {
        load_balancer: lb
            .and_then(|lb| convert::load_balancer(p, &format!("{at}.loadBalancer"), lb)),
        connection_pool: pool
            .map(|c| convert::connection_pool(p, &format!("{at}.connectionPool"), c)),
        outlier_detection: od
            .map(|o| convert::outlier_detection(p, &format!("{at}.outlierDetection"), o)),
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
                &at,
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
            ),
        ));
    }
    PolicyLevel {
        parts: parts(
            p,
            field,
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
        ),
        ports,
    }
}

struct L4Attrs<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<i64>,
    source_labels: &'a BTreeMap<String, String>,
    gateways: &'a [String],
    source_namespace: Option<&'a String>,
}

fn l4_attrs<'a>(
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<i64>,
    source_labels: &'a BTreeMap<String, String>,
    gateways: &'a [String],
    source_namespace: Option<&'a String>,
) -> L4Attrs<'a> {
    L4Attrs {
        sni_hosts,
        destination_subnets,
        port,
        source_labels,
        gateways,
        source_namespace,
    }
}

/// `None` for a bad block, or one bound only to gateways (it never matches mesh traffic).
fn l4_match(p: &mut Problems, field: &str, m: &L4Attrs<'_>) -> Option<L4Match> {
    let subnets = m
        .destination_subnets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| convert::subnet(p, &format!("{field}.destinationSubnets[{i}]"), s))
        .collect();
    let port = match m.port {
        Some(n) => Some(convert::port(p, &format!("{field}.port"), n)?),
        None => None,
    };
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return None;
    }
    Some(L4Match {
        sni_hosts: m.sni_hosts.to_vec(),
        destination_subnets: subnets,
        port,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.cloned(),
    })
}

fn http_match(p: &mut Problems, field: &str, m: &istio::HttpMatchRequest) -> Option<HttpMatch> {
    let before = p.list.len();
    let one = |p: &mut Problems, name: &str, v: Option<&istio::StringMatch>, ignore_case: bool| {
        v.and_then(|v| {
            convert::string_match(p, &format!("{field}.{name}"), v, false, ignore_case).flatten()
        })
    };
    let map = |p: &mut Problems,
               name: &str,
               v: &BTreeMap<String, istio::StringMatch>|
     -> Vec<(http::HeaderName, Option<StringMatch>)> {
        v.iter()
            .filter_map(|(key, m)| {
                let at = format!("{field}.{name}.{key}");
                let header = convert::header_name(p, &at, key)?;
                Some((header, convert::string_match(p, &at, m, true, false)?))
            })
            .collect()
    };
    let compiled = HttpMatch {
        name: m.name.clone(),
        uri: one(p, "uri", m.uri.as_ref(), m.ignore_uri_case),
        scheme: one(p, "scheme", m.scheme.as_ref(), false),
        method: one(p, "method", m.method.as_ref(), false),
        authority: one(p, "authority", m.authority.as_ref(), false),
        headers: map(p, "headers", &m.headers),
        without_headers: map(p, "withoutHeaders", &m.without_headers),
        query_params: m
            .query_params
            .iter()
            .filter_map(|(key, v)| {
                Some((
                    key.clone(),
                    convert::string_match(
                        p,
                        &format!("{field}.queryParams.{key}"),
                        v,
                        true,
                        false,
                    )?,
                ))
            })
            .collect(),
        port: match m.port {
            Some(n) => convert::port(p, &format!("{field}.port"), n),
            None => None,
        },
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
        ignore_uri_case: m.ignore_uri_case,
        prefix_route: None,
    };
    if p.list.len() != before {
        return None;
    }
    // A block bound only to gateways never matches mesh traffic: keep it unmatchable.
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Some(HttpMatch {
            port: Some(0),
            ..compiled
        });
    }
    Some(compiled)
}

fn service_endpoints(
    service: &Service,
    port: &RegistryPort,
    subset: Option<&BTreeMap<String, String>>,
    workloads: &[Arc<Workload>],
) -> Vec<ClusterEndpoint> {
    let Some(service_port) = &port.service_port else {
        return Vec::new();
    };
    let mut endpoints: Vec<ClusterEndpoint> = workloads
        .iter()
        .filter(|w| w.ready && crate::model::selects(service, w))
        .filter(|w| {
            subset.is_none_or(|labels| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        })
        .filter_map(|w| {
            Some(ClusterEndpoint {
                addr: SocketAddrV4::new(w.ip?, crate::model::target_port(service_port, w)?),
                workload: Some(w.clone()),
                weight: 1,
            })
        })
        .collect();
    endpoints.sort_by_key(|e| e.addr);
    endpoints
}

fn entry_endpoints(
    endpoints: &[EntryEndpoint],
    port: &RegistryPort,
    subset: Option<&BTreeMap<String, String>>,
    workloads: &HashMap<Ipv4Addr, Arc<Workload>>,
) -> Vec<ClusterEndpoint> {
    let mut out: Vec<ClusterEndpoint> = endpoints
        .iter()
        .filter(|e| {
            subset.is_none_or(|labels| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        })
        .filter_map(|e| {
            let ip = e.address?;
            let number = port
                .name
                .as_ref()
                .and_then(|name| e.ports.get(name).copied())
                .or(port.target_port)
                .unwrap_or(port.port);
            Some(ClusterEndpoint {
                addr: SocketAddrV4::new(ip, number),
                workload: workloads.get(&ip).cloned(),
                weight: e.weight,
            })
        })
        .collect();
    out.sort_by_key(|e| e.addr);
    out
}

/// The names a DNS entry's cluster resolves: its endpoints' hostnames (matching the subset),
/// or, without endpoints, the host itself (validation keeps wildcards out).
fn dns_endpoints(
    host: &Host,
    endpoints: &[EntryEndpoint],
    port: &RegistryPort,
    subset: Option<&BTreeMap<String, String>>,
) -> Vec<DnsEndpoint> {
    let default_port = port.target_port.unwrap_or(port.port);
    if endpoints.is_empty() {
        return vec![DnsEndpoint {
            name: host.0.clone(),
            port: default_port,
            weight: 1,
        }];
    }
    let mut out: Vec<DnsEndpoint> = endpoints
        .iter()
        .filter(|e| {
            subset.is_none_or(|labels| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        })
        .filter_map(|e| {
            Some(DnsEndpoint {
                name: e.hostname.clone()?,
                port: port
                    .name
                    .as_ref()
                    .and_then(|name| e.ports.get(name).copied())
                    .unwrap_or(default_port),
                weight: e.weight,
            })
        })
        .collect();
    out.sort();
    out
}

/// Whether `name` is a hostname the resolver can be asked for: dot-separated labels of
/// letters, digits, `-` and `_`, no wildcard.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `version` label all endpoints share, if they do.
fn common_version(endpoints: &[ClusterEndpoint]) -> Option<Arc<str>> {
    let mut versions = endpoints
        .iter()
        .map(|e| e.workload.as_ref().and_then(|w| w.labels.get("version")));
    let first = versions.next()??;
    versions
        .all(|v| v == Some(first))
        .then(|| first.as_str().into())
}

/// Istio's MeshConfig as [`MeshSettings`]; `field` prefixes the paths in errors (e.g.
/// `data.mesh`).
pub fn mesh_settings(
    config: &istio::MeshConfig,
    field: &str,
) -> Result<MeshSettings, Vec<(String, String)>> {
    let mut p = Problems::default();
    let outbound_traffic_policy = match config
        .outbound_traffic_policy
        .as_ref()
        .and_then(|o| o.mode.as_deref())
    {
        None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
        Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
        Some(other) => {
            p.add(
                format!("{field}.outboundTrafficPolicy.mode"),
                format!("unknown mode {other:?}: expected ALLOW_ANY or REGISTRY_ONLY"),
            );
            OutboundTrafficPolicy::AllowAny
        }
    };
    let protocol_detection_timeout = convert::opt_duration(
        &mut p,
        &format!("{field}.protocolDetectionTimeout"),
        config.protocol_detection_timeout.as_ref(),
    );
    let access_log = match config.access_log_file.as_deref() {
        None | Some("/dev/stdout") => AccessLogOutput::Stdout,
        Some("") => AccessLogOutput::Off,
        Some(other) => {
            p.add(
                format!("{field}.accessLogFile"),
                format!(
                    "{other:?}: shunt writes its access log to the node proxy's stdout only: \
                     use \"/dev/stdout\", or \"\" to turn it off"
                ),
            );
            AccessLogOutput::Stdout
        }
    };
    if p.is_empty() {
        Ok(MeshSettings {
            outbound_traffic_policy,
            protocol_detection_timeout,
            access_log,
        })
    } else {
        Err(p.list)
    }
}
