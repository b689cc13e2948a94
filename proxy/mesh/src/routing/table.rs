//! Lookups over a [`RouteTable`]: what the data path asks through [`Routes`], with an optional
//! trace of why, which `shuntctl explain` shows (one code path, so they cannot disagree).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::compile::{
    CompiledL4Route, CompiledVirtualService, HttpMatch, L4Match, RegistrySource, RouteTable,
    default_route, host_matches,
};
use super::decision::{
    Cluster, ClusterEndpoint, ClusterError, ClusterKey, Destination, GatewayTarget, Host,
    HttpDecision, MeshSettings, ObjectRef, OutboundTarget, OutboundTrafficPolicy, PortProtocol,
    RequestFacts, Routes, ServiceTarget, StringMatch, TcpDecision, TrafficPolicy,
    WeightedDestination,
};
use crate::ids::EndpointAddr;
use crate::model::Workload;

/// Why a request got its route, for `shuntctl explain`.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The registry host the request was routed as, and how it was found.
    pub host: Option<Host>,
    /// How the host was found, in words (destination address or `Host` header); HTTP only.
    pub resolved_by: String,
    /// The VirtualServices that applied to the host, in merge order.
    pub virtual_services: Vec<ObjectRef>,
    /// The route that matched: its VirtualService, its index in `http`/`tcp`/`tls`, the match
    /// block's index (`None`: the route has no match block) and the fields it tested.
    pub matched: Option<MatchedRoute>,
}

/// The route a traced lookup picked, for `shuntctl explain`.
#[derive(Clone, Debug)]
pub struct MatchedRoute {
    /// The VirtualService the route is in.
    pub virtual_service: ObjectRef,
    /// Which route list it is in: `"http"`, `"tcp"` or `"tls"`.
    pub section: &'static str,
    /// The route's index in that list of its VirtualService (`i` of `spec.http[i]`).
    pub route_index: usize,
    /// The index of the match block that held; `None`: the route has no `match`.
    pub match_index: Option<usize>,
    /// `match[].name` of that block (HTTP only).
    pub match_name: Option<String>,
    /// What the block tested, one field per string (`uri prefix "/api"`, `port 8080`).
    pub fields: Vec<String>,
}

impl RouteTable {
    /// What is at `dst` for a pod of `source`: a ServiceEntry whose `exportTo` leaves out its
    /// namespace is not in its registry.
    pub(super) fn target(&self, dst: SocketAddrV4, source: Option<&Workload>) -> OutboundTarget {
        let namespace = source.map(|s| s.namespace.as_str());
        let at_addr = self
            .by_addr
            .get(&dst)
            .into_iter()
            .flatten()
            .find(|t| self.visible(&t.host, namespace));
        let in_subnet = || {
            self.by_subnet
                .iter()
                .filter(|(subnet, port, _)| *port == dst.port() && subnet.contains(*dst.ip()))
                .map(|(_, _, target)| target)
                .find(|t| self.visible(&t.host, namespace))
        };
        if let Some(target) = at_addr.or_else(in_subnet) {
            return OutboundTarget::Service(with_dst(target, dst));
        }
        OutboundTarget::Unknown {
            dst,
            workload: self.workloads_by_ip.get(dst.ip()).cloned(),
            protocol: PortProtocol::Sniff,
        }
    }

    /// Whether `host` is in the registry of a pod in `namespace` (ServiceEntry `exportTo`).
    pub(super) fn visible(&self, host: &Host, namespace: Option<&str>) -> bool {
        self.registry
            .get(host)
            .is_some_and(|entry| entry.visibility.allows(namespace))
    }

    /// The registry host a `Host` header (or SNI) names on `dst`'s port, as `source` sees
    /// the registry: any spelling of a Service's name (`cart`, `cart.shop`, `cart.shop.svc`,
    /// the FQDN, the ClusterIP) or a ServiceEntry host (wildcards included).
    pub(super) fn host_by_name(
        &self,
        authority: &str,
        dst: SocketAddrV4,
        source: Option<&Workload>,
    ) -> Option<Arc<ServiceTarget>> {
        let port = dst.port();
        let namespace = source.map(|s| s.namespace.as_str());
        let name = strip_port(authority)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return match self.target(SocketAddrV4::new(ip, port), source) {
                OutboundTarget::Service(target) => Some(target),
                OutboundTarget::Unknown { .. } | OutboundTarget::Gateway(_) => None,
            };
        }
        let mut candidates = vec![name.clone()];
        match name.matches('.').count() {
            0 => {
                if let Some(ns) = source.map(|s| s.namespace.as_str()) {
                    candidates.push(format!("{name}.{ns}.svc.cluster.local"));
                }
            }
            1 => candidates.push(format!("{name}.svc.cluster.local")),
            2 if name.ends_with(".svc") => candidates.push(format!("{name}.cluster.local")),
            _ => {}
        }
        for candidate in candidates {
            let host = Host(candidate.into());
            if let Some(target) = self.targets.get(&(host, port))
                && self.visible(&target.host, namespace)
            {
                return Some(with_dst(target, dst));
            }
        }
        // ServiceEntry wildcards, the most specific first.
        let host = Host(name.into());
        self.registry
            .values()
            .filter(|entry| entry.visibility.allows(namespace))
            .map(|entry| &entry.host)
            .filter(|pattern| pattern.0.starts_with('*') && host_matches(pattern, &host))
            .max_by_key(|pattern| pattern.0.len())
            .and_then(|pattern| self.targets.get(&(pattern.clone(), port)))
            .map(|target| with_dst(target, dst))
    }

    /// The VirtualServices for `host` visible from `namespace`: those naming it exactly, else
    /// those with the most specific wildcard; in merge order.
    pub(super) fn virtual_services_for(
        &self,
        host: &Host,
        namespace: Option<&str>,
    ) -> Vec<&Arc<CompiledVirtualService>> {
        let visible = || {
            self.virtual_services
                .iter()
                .filter(|vs| vs.visibility.allows(namespace))
        };
        let exact: Vec<_> = visible().filter(|vs| vs.hosts.contains(host)).collect();
        if !exact.is_empty() {
            return exact;
        }
        let best = visible()
            .flat_map(|vs| vs.hosts.iter())
            .filter(|pattern| host_matches(pattern, host))
            .map(|pattern| pattern.0.len())
            .max();
        let Some(best) = best else { return Vec::new() };
        visible()
            .filter(|vs| {
                vs.hosts
                    .iter()
                    .any(|p| p.0.len() == best && host_matches(p, host))
            })
            .collect()
    }

    pub(super) fn route_http(
        &self,
        target: &OutboundTarget,
        request: &RequestFacts<'_>,
        mut trace: Option<&mut Trace>,
    ) -> HttpDecision {
        let source = request.source;
        let resolved = match target {
            OutboundTarget::Gateway(target) => {
                return self.route_gateway_http(target, request, trace);
            }
            OutboundTarget::Service(target) => Some((
                target.clone(),
                "the destination address is its ClusterIP or ServiceEntry address",
            )),
            OutboundTarget::Unknown { dst, .. } => request
                .authority
                .and_then(|authority| self.host_by_name(authority, *dst, source))
                .map(|t| {
                    (
                        t,
                        "the Host header names it (the destination address is not in the registry)",
                    )
                }),
        };
        let Some((target, why)) = resolved else {
            let OutboundTarget::Unknown { dst, .. } = target else {
                return HttpDecision::BlockedByRegistryOnly {
                    authority: String::new(),
                };
            };
            if let Some(trace) = trace {
                trace.resolved_by =
                    "neither the destination address nor the Host header is in the registry".into();
            }
            return match self.mesh.outbound_traffic_policy {
                OutboundTrafficPolicy::RegistryOnly => HttpDecision::BlockedByRegistryOnly {
                    authority: request.authority.unwrap_or_default().to_owned(),
                },
                OutboundTrafficPolicy::AllowAny => {
                    HttpDecision::Route(Arc::new(passthrough_route(*dst)))
                }
            };
        };
        if let Some(trace) = trace.as_deref_mut() {
            trace.host = Some(target.host.clone());
            trace.resolved_by = why.into();
        }
        let namespace = source.map(|s| s.namespace.as_str());
        let virtual_services = self.virtual_services_for(&target.host, namespace);
        if let Some(trace) = trace.as_deref_mut() {
            trace.virtual_services = virtual_services
                .iter()
                .map(|vs| vs.object.clone())
                .collect();
        }
        let rate_limit = self.host_rate_limits.get(&target.host);
        if virtual_services.is_empty() || virtual_services.iter().all(|vs| vs.http.is_empty()) {
            return HttpDecision::Route(self.default_http_route(&target));
        }
        if let Some(chosen) = first_http_route(&virtual_services, request, trace) {
            // A per-host RateLimitPolicy covers routes that have no route-level one.
            return HttpDecision::Route(match (rate_limit, &chosen.rate_limit) {
                (Some(limit), None) => {
                    let mut limited = (*chosen).clone();
                    limited.rate_limit = Some(limit.clone());
                    Arc::new(limited)
                }
                _ => chosen,
            });
        }
        HttpDecision::NoRouteMatched {
            virtual_service: virtual_services[0].object.clone(),
        }
    }

    fn default_http_route(&self, target: &ServiceTarget) -> Arc<super::HttpRoute> {
        self.default_routes
            .get(&(target.host.clone(), target.port))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(default_route(
                    Destination {
                        host: target.host.clone(),
                        subset: None,
                        port: Some(target.port),
                    },
                    self.host_rate_limits.get(&target.host).cloned(),
                ))
            })
    }

    pub(super) fn route_tcp(
        &self,
        target: &OutboundTarget,
        sni: Option<&str>,
        source: Option<&Workload>,
        mut trace: Option<&mut Trace>,
    ) -> TcpDecision {
        let namespace = source.map(|s| s.namespace.as_str());
        // `destinationSubnets` compare the address the client dialled, whatever names it.
        let (resolved, dst_ip) = match target {
            OutboundTarget::Gateway(target) => {
                return self.route_gateway_tcp(target, sni, source);
            }
            OutboundTarget::Service(t) => (Some(t.clone()), *t.dst.ip()),
            OutboundTarget::Unknown { dst, .. } => {
                let by_sni = sni.and_then(|sni| self.host_by_name(sni, *dst, source));
                (
                    by_sni.or_else(|| self.port_wide_entry(*dst, namespace)),
                    *dst.ip(),
                )
            }
        };
        let Some(target) = resolved else {
            return match self.mesh.outbound_traffic_policy {
                OutboundTrafficPolicy::RegistryOnly => TcpDecision::BlockedByRegistryOnly,
                OutboundTrafficPolicy::AllowAny => TcpDecision::Passthrough,
            };
        };
        if let Some(trace) = trace.as_deref_mut() {
            trace.host = Some(target.host.clone());
        }
        let virtual_services = self.virtual_services_for(&target.host, namespace);
        for vs in &virtual_services {
            let (section, routes) = if sni.is_some() {
                ("tls", &vs.tls)
            } else {
                ("tcp", &vs.tcp)
            };
            for route in routes {
                let matched = if route.matches.is_empty() {
                    Some(None)
                } else {
                    route
                        .matches
                        .iter()
                        .enumerate()
                        .find(|(_, m)| l4_match_applies(m, target.port, dst_ip, sni, source))
                        .map(Some)
                };
                let Some(block) = matched else { continue };
                if let Some(trace) = trace.as_deref_mut() {
                    trace.matched = Some(MatchedRoute {
                        virtual_service: vs.object.clone(),
                        section,
                        route_index: route.index,
                        match_index: block.map(|(i, _)| i),
                        match_name: None,
                        fields: block.map(|(_, m)| describe_l4_match(m)).unwrap_or_default(),
                    });
                }
                return forward(route, &vs.object);
            }
        }
        TcpDecision::Forward {
            route_name: "default".into(),
            virtual_service: None,
            destinations: vec![WeightedDestination {
                destination: Destination {
                    host: target.host.clone(),
                    subset: None,
                    port: Some(target.port),
                },
                weight: 100,
                request_headers: Default::default(),
                response_headers: Default::default(),
            }],
        }
    }

    /// A ServiceEntry without addresses claims its ports for every unknown address (Istio's
    /// wildcard listener for it), the first by namespace/name of those `namespace` sees.
    fn port_wide_entry(
        &self,
        dst: SocketAddrV4,
        namespace: Option<&str>,
    ) -> Option<Arc<ServiceTarget>> {
        let port = dst.port();
        let mut entries: Vec<_> = self
            .registry
            .values()
            .filter(|h| h.visibility.allows(namespace))
            .filter(|h| {
                matches!(
                    &h.source,
                    RegistrySource::Entry {
                        has_addresses: false,
                        ..
                    }
                ) && !h.host.0.starts_with('*')
            })
            .filter(|h| {
                h.port(port).is_some_and(|p| {
                    matches!(
                        p.protocol,
                        PortProtocol::Tcp | PortProtocol::Tls | PortProtocol::Sniff
                    )
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.namespace, &a.host).cmp(&(&b.namespace, &b.host)));
        entries
            .first()
            .and_then(|h| self.targets.get(&(h.host.clone(), port)))
            .map(|target| with_dst(target, dst))
    }

    /// The cluster of `destination` under the DestinationRule in force for `source`.
    pub(super) fn find_cluster(
        &self,
        destination: &Destination,
        request_port: u16,
        source: Option<&Workload>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let namespace = source.map(|s| s.namespace.as_str());
        // An address nothing names (ALLOW_ANY): dialled as it was dialled.
        if let Ok(ip) = destination.host.0.parse::<Ipv4Addr>() {
            let port = destination.port.unwrap_or(request_port);
            let key = ClusterKey {
                host: destination.host.clone(),
                subset: None,
                port,
            };
            return Ok(Arc::new(Cluster {
                key,
                protocol: PortProtocol::Sniff,
                service: None,
                endpoints: vec![ClusterEndpoint {
                    addr: EndpointAddr::new(ip, port),
                    workload: self.workloads_by_ip.get(&ip).cloned(),
                    weight: 1,
                }],
                dns: Vec::new(),
                service_entry: None,
                policy: TrafficPolicy::default(),
                version: None,
            }));
        }
        let Some(entry) = self
            .registry
            .get(&destination.host)
            .filter(|entry| entry.visibility.allows(namespace))
        else {
            return Err(ClusterError::UnknownHost(destination.host.clone()));
        };
        let port = match destination.port {
            Some(port) => port,
            None if entry.port(request_port).is_some() => request_port,
            None => match entry.ports.as_slice() {
                [only] => only.port,
                _ => request_port,
            },
        };
        if entry.port(port).is_none() {
            return Err(ClusterError::UnknownPort {
                host: destination.host.clone(),
                port,
            });
        }
        let key = ClusterKey {
            host: destination.host.clone(),
            subset: destination.subset.clone(),
            port,
        };
        let rule = self.destination_rule(entry, namespace).map(|(i, _)| i);
        self.clusters
            .get(&(key, rule))
            .cloned()
            .ok_or_else(|| match &destination.subset {
                Some(subset) => ClusterError::UnknownSubset {
                    host: destination.host.clone(),
                    subset: subset.clone(),
                },
                None => ClusterError::UnknownPort {
                    host: destination.host.clone(),
                    port,
                },
            })
    }
}

/// `target` as found through `dst` (targets are stored once per host and port).
fn with_dst(target: &Arc<ServiceTarget>, dst: SocketAddrV4) -> Arc<ServiceTarget> {
    if target.dst == dst {
        return target.clone();
    }
    Arc::new(ServiceTarget {
        dst,
        ..(**target).clone()
    })
}

/// The first HTTP route of `virtual_services` (in merge order) that `request` matches, with
/// `Rewrite::matched_prefix` set when a prefix block chose it; the match goes to `trace`.
fn first_http_route(
    virtual_services: &[&Arc<CompiledVirtualService>],
    request: &RequestFacts<'_>,
    mut trace: Option<&mut Trace>,
) -> Option<Arc<super::HttpRoute>> {
    for vs in virtual_services {
        for route in &vs.http {
            let matched = if route.matches.is_empty() {
                Some(None)
            } else {
                route
                    .matches
                    .iter()
                    .enumerate()
                    .find(|(_, m)| http_match_applies(m, request))
                    .map(Some)
            };
            let Some(block) = matched else { continue };
            if let Some(trace) = trace.as_deref_mut() {
                trace.matched = Some(MatchedRoute {
                    virtual_service: vs.object.clone(),
                    section: "http",
                    route_index: route.index,
                    match_index: block.map(|(i, _)| i),
                    match_name: block.and_then(|(_, m)| m.name.clone()),
                    fields: block
                        .map(|(_, m)| describe_http_match(m))
                        .unwrap_or_default(),
                });
            }
            return Some(
                block
                    .and_then(|(_, m)| m.prefix_route.clone())
                    .unwrap_or_else(|| route.route.clone()),
            );
        }
    }
    None
}

fn forward(route: &CompiledL4Route, object: &ObjectRef) -> TcpDecision {
    TcpDecision::Forward {
        route_name: route.name.clone(),
        virtual_service: Some(object.clone()),
        destinations: route.destinations.clone(),
    }
}

/// The route of an HTTP request to an address nothing names, under ALLOW_ANY.
fn passthrough_route(dst: SocketAddrV4) -> super::HttpRoute {
    let mut route = default_route(
        Destination {
            host: Host(dst.ip().to_string().into()),
            subset: None,
            port: Some(dst.port()),
        },
        None,
    );
    route.name = "allow_any".into();
    route
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') => {
            host
        }
        _ => authority,
    }
}

fn header_text(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn query_param<'a>(uri: &'a http::Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn labels_match(
    want: &std::collections::BTreeMap<String, String>,
    source: Option<&Workload>,
) -> bool {
    want.is_empty() || source.is_some_and(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
}

/// All fields of one block hold (fields are ANDed).
fn http_match_applies(m: &HttpMatch, r: &RequestFacts<'_>) -> bool {
    let opt = |matcher: &Option<StringMatch>, value: Option<&str>, ignore_case: bool| {
        matcher
            .as_ref()
            .is_none_or(|want| value.is_some_and(|v| want.matches(v, ignore_case)))
    };
    opt(&m.uri, Some(r.uri.path()), m.ignore_uri_case)
        && opt(&m.scheme, Some(r.uri.scheme_str().unwrap_or("http")), false)
        && opt(&m.method, Some(r.method.as_str()), false)
        && opt(&m.authority, r.authority, false)
        && m.port.is_none_or(|p| p == r.port)
        && m.headers
            .iter()
            .all(|(name, want)| match (header_text(r.headers, name), want) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(value), Some(want)) => want.matches(&value, false),
            })
        && m.without_headers
            .iter()
            .all(|(name, want)| match (header_text(r.headers, name), want) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(value), Some(want)) => !want.matches(&value, false),
            })
        && m.query_params
            .iter()
            .all(|(key, want)| match (query_param(r.uri, key), want) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(value), Some(want)) => want.matches(value, false),
            })
        && labels_match(&m.source_labels, r.source)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| r.source.is_some_and(|s| &s.namespace == ns))
}

fn l4_match_applies(
    m: &L4Match,
    port: u16,
    dst_ip: Ipv4Addr,
    sni: Option<&str>,
    source: Option<&Workload>,
) -> bool {
    m.port.is_none_or(|p| p == port)
        && (m.destination_subnets.is_empty()
            || m.destination_subnets.iter().any(|s| s.contains(dst_ip)))
        && (m.sni_hosts.is_empty()
            || sni.is_some_and(|sni| {
                m.sni_hosts.iter().any(|pattern| {
                    host_matches(
                        &Host(pattern.as_str().into()),
                        &Host(sni.to_ascii_lowercase().into()),
                    )
                })
            }))
        && labels_match(&m.source_labels, source)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| source.is_some_and(|s| &s.namespace == ns))
}

pub(super) fn describe_string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("exact {v:?}"),
        StringMatch::Prefix(v) => format!("prefix {v:?}"),
        StringMatch::Regex(re) => format!("regex {:?}", re.as_str()),
    }
}

/// The fields a match block tests, one string each (`uri prefix "/api"`).
pub(super) fn describe_http_match(m: &HttpMatch) -> Vec<String> {
    let mut out = Vec::new();
    let mut one = |name: &str, v: &Option<StringMatch>| {
        if let Some(v) = v {
            out.push(format!("{name} {}", describe_string_match(v)));
        }
    };
    one("uri", &m.uri);
    one("scheme", &m.scheme);
    one("method", &m.method);
    one("authority", &m.authority);
    for (name, want) in &m.headers {
        out.push(want.as_ref().map_or_else(
            || format!("header {name} present"),
            |w| format!("header {name} {}", describe_string_match(w)),
        ));
    }
    for (name, want) in &m.without_headers {
        out.push(want.as_ref().map_or_else(
            || format!("without header {name}"),
            |w| format!("without header {name} {}", describe_string_match(w)),
        ));
    }
    for (key, want) in &m.query_params {
        out.push(want.as_ref().map_or_else(
            || format!("query {key} present"),
            |w| format!("query {key} {}", describe_string_match(w)),
        ));
    }
    if let Some(port) = m.port {
        out.push(format!("port {port}"));
    }
    if !m.source_labels.is_empty() {
        out.push(format!("sourceLabels {:?}", m.source_labels));
    }
    if let Some(ns) = &m.source_namespace {
        out.push(format!("sourceNamespace {ns}"));
    }
    if m.ignore_uri_case {
        out.push("ignoreUriCase".into());
    }
    out
}

pub(super) fn describe_l4_match(m: &L4Match) -> Vec<String> {
    let mut out = Vec::new();
    if !m.sni_hosts.is_empty() {
        out.push(format!("sniHosts {}", m.sni_hosts.join(",")));
    }
    if !m.destination_subnets.is_empty() {
        out.push(format!(
            "destinationSubnets {}",
            m.destination_subnets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(port) = m.port {
        out.push(format!("port {port}"));
    }
    if !m.source_labels.is_empty() {
        out.push(format!("sourceLabels {:?}", m.source_labels));
    }
    if let Some(ns) = &m.source_namespace {
        out.push(format!("sourceNamespace {ns}"));
    }
    out
}

impl Routes for RouteTable {
    fn outbound_target(&self, dst: SocketAddrV4, source: Option<&Workload>) -> OutboundTarget {
        self.target(dst, source)
    }

    fn http_route(&self, target: &OutboundTarget, request: &RequestFacts<'_>) -> HttpDecision {
        self.route_http(target, request, None)
    }

    fn tcp_route(
        &self,
        target: &OutboundTarget,
        sni: Option<&str>,
        source: Option<&Workload>,
    ) -> TcpDecision {
        self.route_tcp(target, sni, source, None)
    }

    fn cluster(
        &self,
        destination: &Destination,
        request_port: u16,
        source: Option<&Workload>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        self.find_cluster(destination, request_port, source)
    }

    fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    fn gateway_target(
        &self,
        pod: &crate::ids::PodUid,
        port: u16,
        server: Option<Arc<crate::gateway::GatewayServer>>,
    ) -> Option<OutboundTarget> {
        RouteTable::gateway_target(self, pod, port, server)
    }
}

/// A gateway server in scope with one of its hosts, and how specifically that host names the
/// request's (0 where no host is matched).
type RankedServer<'a> = (
    usize,
    &'a Arc<crate::gateway::GatewayServer>,
    &'a crate::gateway::ServerHost,
);

/// Gateway lookups: a gateway port's target, and its requests and connections routed by the
/// VirtualServices bound to the port's Gateways.
impl RouteTable {
    fn gateway_target(
        &self,
        pod: &crate::ids::PodUid,
        port: u16,
        server: Option<Arc<crate::gateway::GatewayServer>>,
    ) -> Option<OutboundTarget> {
        let (workload, listeners) = self.gateway_pods.get(pod)?;
        let port = listeners.ports.iter().find(|p| p.port == port)?.clone();
        Some(OutboundTarget::Gateway(Arc::new(GatewayTarget {
            workload: workload.clone(),
            port,
            server,
        })))
    }

    /// The gateway pod's listeners.
    #[must_use]
    pub fn gateway_listeners(
        &self,
        pod: &crate::ids::PodUid,
    ) -> Option<Arc<crate::gateway::GatewayListeners>> {
        self.gateway_pods.get(pod).map(|(_, l)| l.clone())
    }

    /// Every Secret a server of a gateway pod on `node` names, sorted, once each.
    #[must_use]
    pub fn gateway_credentials(&self, node: &str) -> Vec<(String, String)> {
        let mut refs: Vec<(String, String)> = self
            .gateway_pods
            .values()
            .filter(|(workload, _)| workload.node.as_deref() == Some(node))
            .flat_map(|(_, listeners)| listeners.ports.iter())
            .flat_map(|port| port.servers.iter())
            .filter_map(|server| match server.tls.as_ref()?.mode.as_ref()? {
                crate::gateway::ServerTlsMode::Simple(c)
                | crate::gateway::ServerTlsMode::Mutual(c) => match c {
                    crate::gateway::Credential::Secret { namespace, name } => {
                        Some((namespace.to_string(), name.to_string()))
                    }
                    crate::gateway::Credential::Files { .. } => None,
                },
                _ => None,
            })
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// The servers of `target` in scope: the one the target names, or all on its port.
    fn target_servers(target: &GatewayTarget) -> Vec<&Arc<crate::gateway::GatewayServer>> {
        match &target.server {
            Some(server) => vec![server],
            None => target.port.servers.iter().collect(),
        }
    }

    /// The servers of `target` in scope, each with how specifically one of its hosts names
    /// `host` (best first); a server whose hosts do not name it is out.
    fn gateway_servers<'a>(target: &'a GatewayTarget, host: &str) -> Vec<RankedServer<'a>> {
        let mut ranked: Vec<_> = Self::target_servers(target)
            .into_iter()
            .filter_map(|server| {
                server
                    .hosts
                    .iter()
                    .filter_map(|h| crate::gateway::host_rank(&h.host, host).map(|r| (r, h)))
                    .max_by_key(|(r, _)| *r)
                    .map(|(r, h)| (r, server, h))
            })
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked
    }

    /// The VirtualServices bound to the servers' Gateways, each server host's namespace
    /// restriction applied, once each, in the servers' order.
    fn gateway_candidates(
        &self,
        servers: &[RankedServer<'_>],
    ) -> Vec<&Arc<CompiledVirtualService>> {
        let mut candidates: Vec<&Arc<CompiledVirtualService>> = Vec::new();
        for (_, server, server_host) in servers {
            let key = (
                server.gateway.namespace.clone(),
                server.gateway.name.clone(),
            );
            for vs in self
                .gateway_virtual_services
                .get(&key)
                .into_iter()
                .flatten()
            {
                let allowed = server_host
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| *vs.object.namespace == *ns);
                if allowed && !candidates.iter().any(|c| Arc::ptr_eq(c, vs)) {
                    candidates.push(vs);
                }
            }
        }
        candidates
    }

    /// The VirtualServices bound to the servers' Gateways that may serve `host` (each server
    /// host's namespace restriction applied), the most specific host pattern winning, as
    /// [`Self::virtual_services_for`] picks them for the mesh.
    fn gateway_virtual_services_for(
        &self,
        servers: &[RankedServer<'_>],
        host: &str,
    ) -> Vec<&Arc<CompiledVirtualService>> {
        let candidates = self.gateway_candidates(servers);
        let rank = |vs: &CompiledVirtualService| {
            vs.hosts
                .iter()
                .filter_map(|p| crate::gateway::host_rank(&p.0, host))
                .max()
        };
        let Some(best) = candidates.iter().filter_map(|vs| rank(vs)).max() else {
            return Vec::new();
        };
        candidates
            .into_iter()
            .filter(|vs| rank(vs) == Some(best))
            .collect()
    }

    pub(super) fn route_gateway_http(
        &self,
        target: &GatewayTarget,
        request: &RequestFacts<'_>,
        mut trace: Option<&mut Trace>,
    ) -> HttpDecision {
        let authority = request.authority.unwrap_or_default();
        let host = strip_port(authority).to_ascii_lowercase();
        let servers = Self::gateway_servers(target, &host);
        let Some((_, best, _)) = servers.first() else {
            return HttpDecision::NoVirtualHost {
                authority: authority.to_owned(),
            };
        };
        // `httpsRedirect` applies to every virtual host of its server.
        if best.tls.as_ref().is_some_and(|tls| tls.https_redirect) {
            return HttpDecision::HttpsRedirect;
        }
        let virtual_services = self.gateway_virtual_services_for(&servers, &host);
        if let Some(trace) = trace.as_deref_mut() {
            trace.host = Some(Host(host.as_str().into()));
            trace.resolved_by = format!(
                "the Host header, on port {} of gateway pod {}/{}",
                target.port.port, target.workload.namespace, target.workload.name
            );
            trace.virtual_services = virtual_services
                .iter()
                .map(|vs| vs.object.clone())
                .collect();
        }
        if virtual_services.is_empty() {
            return HttpDecision::NoVirtualHost {
                authority: authority.to_owned(),
            };
        }
        if let Some(chosen) = first_http_route(&virtual_services, request, trace) {
            return HttpDecision::Route(chosen);
        }
        HttpDecision::NoRouteMatched {
            virtual_service: virtual_services[0].object.clone(),
        }
    }

    pub(super) fn route_gateway_tcp(
        &self,
        target: &GatewayTarget,
        sni: Option<&str>,
        source: Option<&Workload>,
    ) -> TcpDecision {
        let host = sni.map(str::to_ascii_lowercase);
        // A TCP server has no host to match but `*` (or its hosts, for the Gateway's scope).
        let servers = match &host {
            Some(host) => Self::gateway_servers(target, host),
            None => Self::target_servers(target)
                .into_iter()
                .flat_map(|s| s.hosts.iter().map(move |h| (0, s, h)))
                .collect(),
        };
        let passthrough = target.server.as_ref().is_some_and(|s| {
            matches!(
                s.tls.as_ref().and_then(|t| t.mode.as_ref()),
                Some(crate::gateway::ServerTlsMode::Passthrough)
            )
        });
        let candidates: Vec<&Arc<CompiledVirtualService>> = match &host {
            Some(host) => self.gateway_virtual_services_for(&servers, host),
            None => self.gateway_candidates(&servers),
        };
        let dst_ip = target.workload.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for vs in candidates {
            let routes = if passthrough { &vs.tls } else { &vs.tcp };
            for route in routes {
                let applies = route.matches.is_empty()
                    || route
                        .matches
                        .iter()
                        .any(|m| l4_match_applies(m, target.port.port, dst_ip, sni, source));
                if applies {
                    return forward(route, &vs.object);
                }
            }
        }
        TcpDecision::NoRoute
    }
}
