//! The registry: Kubernetes Services and ServiceEntries, the hosts they define and their
//! endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::compiled::*;
use crate::ids::EndpointAddr;
use crate::istio;
use crate::model::{MeshState, Service, Workload};
use crate::routing::Error;
use crate::routing::convert::{self, MISSING, Problems, Subnet, Visibility};
use crate::routing::decision::{ClusterEndpoint, DnsEndpoint, Host, ServiceTarget};

impl RouteTable {
    pub(super) fn add_services(&mut self, state: &MeshState) {
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

    pub(super) fn add_service_entry(
        &mut self,
        entry: &istio::ServiceEntry,
        errors: &mut Vec<Error>,
    ) {
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
}

impl RouteTable {
    /// A host as written in an object of `namespace`, made fully qualified: `cart` is
    /// `cart.<namespace>.svc.cluster.local`; `cart.shop` and `cart.shop.svc` name the Service
    /// `cart` of `shop` when there is one; anything else is taken as written.
    pub(in crate::routing) fn resolve_host(&self, host: &str, namespace: &str) -> Host {
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
}

impl EntryEndpoint {
    pub(super) fn clone_parts(&self) -> Self {
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
    pub(in crate::routing) fn describe(&self) -> String {
        match &self.source {
            RegistrySource::Service(s) => format!("Service {}/{}", s.namespace, s.name),
            RegistrySource::Entry { object, .. } => object.to_string(),
        }
    }

    pub(in crate::routing) fn port(&self, port: u16) -> Option<&RegistryPort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

pub(super) fn entry_endpoints(
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
                addr: EndpointAddr::new(ip, number),
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
pub(super) fn dns_endpoints(
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
pub(super) fn is_dns_name(name: &str) -> bool {
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
