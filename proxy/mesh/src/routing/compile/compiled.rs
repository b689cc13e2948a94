//! The compiled table's types, shared by every kind's compiler and by the lookups in
//! `routing::table` and `routing::explain`.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::istio;
use crate::model::{Service, Workload};
use crate::routing::Error;
use crate::routing::convert::{Problems, Subnet, Visibility};
use crate::routing::decision::{
    Cluster, ClusterKey, ConnectionPool, Host, HttpRoute, LoadBalancer, ObjectRef,
    OutlierDetection, PortProtocol, RateLimit, ServiceTarget, StringMatch, UpstreamTls,
    WeightedDestination,
};
use crate::settings::MeshSettings;

/// The compiled routing config of one [`MeshState`]; answers the data path's questions
/// through [`super::Routes`].
#[derive(Debug, Default)]
pub struct RouteTable {
    pub(in crate::routing) mesh: MeshSettings,
    pub(in crate::routing) workloads_by_ip: HashMap<Ipv4Addr, Arc<Workload>>,
    /// Kubernetes Services and ServiceEntry hosts.
    pub(in crate::routing) registry: BTreeMap<Host, RegistryHost>,
    /// Every target at an address, in registry order (Services by namespace/name, then
    /// ServiceEntries in merge order): the first one visible to the client names it.
    pub(in crate::routing) by_addr: HashMap<SocketAddrV4, Vec<Arc<ServiceTarget>>>,
    /// ServiceEntry `addresses` given as CIDRs, with their ports.
    pub(in crate::routing) by_subnet: Vec<(Subnet, u16, Arc<ServiceTarget>)>,
    pub(in crate::routing) targets: HashMap<(Host, u16), Arc<ServiceTarget>>,
    /// Valid VirtualServices bound to the mesh, in merge order.
    pub(in crate::routing) virtual_services: Vec<Arc<CompiledVirtualService>>,
    /// The valid DestinationRules, at most one per (namespace, host pattern), sorted by
    /// namespace/name; [`Self::destination_rule`] picks the one in force for a client.
    pub(in crate::routing) destination_rules: Vec<Arc<CompiledDestinationRule>>,
    /// Every cluster under each rule that may be in force for its host (index into
    /// `destination_rules`; `None`: no rule).
    pub(in crate::routing) clusters: HashMap<(ClusterKey, Option<usize>), Arc<Cluster>>,
    /// The implicit route of each registry host and port.
    pub(in crate::routing) default_routes: HashMap<(Host, u16), Arc<HttpRoute>>,
    /// `RateLimitPolicy` with `service`: per host.
    pub(in crate::routing) host_rate_limits: HashMap<Host, Arc<RateLimit>>,
    /// Every gateway pod (of any node): its workload and the ports its Gateways give it.
    pub(in crate::routing) gateway_pods:
        HashMap<crate::ids::PodUid, (Arc<Workload>, Arc<crate::gateway::GatewayListeners>)>,
    /// The VirtualServices bound to each Gateway (`namespace`, `name`), in merge order, each
    /// holding only what binds there.
    pub(in crate::routing) gateway_virtual_services:
        HashMap<GatewayKey, Vec<Arc<CompiledVirtualService>>>,
}

#[derive(Debug)]
pub(in crate::routing) struct RegistryHost {
    pub(in crate::routing) host: Host,
    pub(in crate::routing) namespace: String,
    /// A ServiceEntry's `exportTo`; Kubernetes Services are visible everywhere.
    pub(in crate::routing) visibility: Visibility,
    pub(in crate::routing) source: RegistrySource,
    pub(in crate::routing) ports: Vec<RegistryPort>,
}

#[derive(Debug)]
pub(in crate::routing) enum RegistrySource {
    Service(Arc<Service>),
    Entry {
        object: ObjectRef,
        resolution: Resolution,
        endpoints: Vec<EntryEndpoint>,
        has_addresses: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::routing) enum Resolution {
    None,
    Static,
    Dns,
}

#[derive(Debug)]
pub(in crate::routing) struct EntryEndpoint {
    pub(in crate::routing) address: Option<Ipv4Addr>,
    /// A hostname `address` (resolution DNS), resolved by the proxy.
    pub(in crate::routing) hostname: Option<Arc<str>>,
    pub(in crate::routing) ports: BTreeMap<String, u16>,
    pub(in crate::routing) labels: BTreeMap<String, String>,
    pub(in crate::routing) weight: u32,
}

#[derive(Debug)]
pub(in crate::routing) struct RegistryPort {
    pub(in crate::routing) port: u16,
    pub(in crate::routing) name: Option<String>,
    pub(in crate::routing) protocol: PortProtocol,
    pub(in crate::routing) service_port: Option<crate::model::ServicePort>,
    pub(in crate::routing) target_port: Option<u16>,
}

/// `namespace/name` of a Gateway, as VirtualServices name it.
pub(in crate::routing) type GatewayKey = (Arc<str>, Arc<str>);

#[derive(Debug)]
pub(in crate::routing) struct CompiledVirtualService {
    pub(in crate::routing) object: ObjectRef,
    pub(in crate::routing) hosts: Vec<Host>,
    pub(in crate::routing) visibility: Visibility,
    pub(in crate::routing) http: Vec<CompiledHttpRoute>,
    pub(in crate::routing) tcp: Vec<CompiledL4Route>,
    pub(in crate::routing) tls: Vec<CompiledL4Route>,
}

#[derive(Debug)]
pub(in crate::routing) struct CompiledHttpRoute {
    pub(in crate::routing) index: usize,
    /// Empty: matches every request.
    pub(in crate::routing) matches: Vec<HttpMatch>,
    pub(in crate::routing) route: Arc<HttpRoute>,
}

#[derive(Debug)]
pub(in crate::routing) struct HttpMatch {
    pub(in crate::routing) name: Option<String>,
    pub(in crate::routing) uri: Option<StringMatch>,
    pub(in crate::routing) scheme: Option<StringMatch>,
    pub(in crate::routing) method: Option<StringMatch>,
    pub(in crate::routing) authority: Option<StringMatch>,
    pub(in crate::routing) headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub(in crate::routing) without_headers: Vec<(http::HeaderName, Option<StringMatch>)>,
    pub(in crate::routing) query_params: Vec<(String, Option<StringMatch>)>,
    pub(in crate::routing) port: Option<u16>,
    pub(in crate::routing) source_labels: BTreeMap<String, String>,
    pub(in crate::routing) source_namespace: Option<String>,
    pub(in crate::routing) ignore_uri_case: bool,
    /// The route with `Rewrite::matched_prefix` set, when this block's `uri` is a prefix and
    /// the route rewrites the uri.
    pub(in crate::routing) prefix_route: Option<Arc<HttpRoute>>,
}

#[derive(Debug)]
pub(in crate::routing) struct CompiledL4Route {
    pub(in crate::routing) index: usize,
    pub(in crate::routing) name: Arc<str>,
    pub(in crate::routing) matches: Vec<L4Match>,
    pub(in crate::routing) destinations: Vec<WeightedDestination>,
}

#[derive(Debug)]
pub(in crate::routing) struct L4Match {
    pub(in crate::routing) sni_hosts: Vec<String>,
    pub(in crate::routing) destination_subnets: Vec<Subnet>,
    pub(in crate::routing) port: Option<u16>,
    pub(in crate::routing) source_labels: BTreeMap<String, String>,
    pub(in crate::routing) source_namespace: Option<String>,
}

#[derive(Debug)]
pub(in crate::routing) struct CompiledDestinationRule {
    pub(in crate::routing) object: ObjectRef,
    /// `spec.host`, made fully qualified (may be a wildcard).
    pub(in crate::routing) host: Host,
    pub(in crate::routing) visibility: Visibility,
    pub(in crate::routing) top: PolicyLevel,
    pub(in crate::routing) subsets: Vec<CompiledSubset>,
}

#[derive(Debug)]
pub(in crate::routing) struct CompiledSubset {
    pub(in crate::routing) name: Arc<str>,
    pub(in crate::routing) labels: BTreeMap<String, String>,
    pub(in crate::routing) policy: PolicyLevel,
}

/// One level's `trafficPolicy` (top or subset): what it sets, and its port-level overrides.
#[derive(Clone, Debug, Default)]
pub(in crate::routing) struct PolicyLevel {
    pub(in crate::routing) parts: PolicyParts,
    pub(in crate::routing) ports: Vec<(u16, PolicyParts)>,
}

#[derive(Clone, Debug, Default)]
pub(in crate::routing) struct PolicyParts {
    pub(in crate::routing) load_balancer: Option<LoadBalancer>,
    pub(in crate::routing) connection_pool: Option<ConnectionPool>,
    pub(in crate::routing) outlier_detection: Option<OutlierDetection>,
    pub(in crate::routing) tls: Option<UpstreamTls>,
}

pub(super) fn object_ref(kind: &'static str, metadata: &istio::Metadata) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: metadata.namespace.as_str().into(),
        name: metadata.name.as_str().into(),
    }
}

/// Every problem of one object, as errors that drop it.
pub(super) fn invalid(object: &ObjectRef, problems: Problems) -> impl Iterator<Item = Error> + '_ {
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
pub(super) fn merge_order<S>(objects: &[istio::Resource<S>]) -> Vec<&istio::Resource<S>> {
    let mut sorted: Vec<_> = objects.iter().collect();
    sorted.sort_by(|a, b| merge_key(&a.metadata).cmp(&merge_key(&b.metadata)));
    sorted
}

/// [`merge_order`]'s key.
pub(super) fn merge_key(metadata: &istio::Metadata) -> (&Option<String>, &String, &String) {
    (
        &metadata.creation_timestamp,
        &metadata.namespace,
        &metadata.name,
    )
}

/// Whether a host pattern (`*`, `*.example.com` or a host) covers `host`.
pub(in crate::routing) fn host_matches(pattern: &Host, host: &Host) -> bool {
    let pattern = &*pattern.0;
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.0.ends_with(suffix) && host.0.len() > suffix.len(),
        None => pattern == &*host.0,
    }
}
