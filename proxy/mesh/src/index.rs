//! The index built from a [`MeshState`] to route and label connections: workloads by IP
//! and uid, Service ports with their ready endpoints, and the compiled route table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{MeshState, Service, Workload, selects, target_port};
use crate::routing::{self, RouteTable};

/// A problem in a [`MeshState`]; the rest of the state still applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two Services claim one ClusterIP:port; the first by namespace/name keeps it.
    #[error(
        "Service {ignored}: spec.clusterIP:port {addr} is already Service {kept}'s; \
         connections to it go to {kept}"
    )]
    DuplicateServiceAddress {
        /// The ClusterIP:port both claim.
        addr: SocketAddrV4,
        /// `namespace/name` of the Service that keeps the address.
        kept: String,
        /// `namespace/name` of the Service whose port is left out.
        ignored: String,
    },
    /// A problem in the Istio config, from [`RouteTable::build`].
    #[error(transparent)]
    Routing(#[from] routing::Error),
}

/// Where a connection to some address should go.
#[derive(Debug)]
pub enum Route<'a> {
    /// A Service address: `endpoint` was picked round robin among the ready endpoints.
    Service {
        /// The Service that owns the address.
        service: &'a Arc<Service>,
        /// The endpoint this connection goes to.
        endpoint: &'a Endpoint,
    },
    /// A Service address with no ready endpoint behind it.
    NoReadyEndpoints {
        /// The Service that owns the address.
        service: &'a Arc<Service>,
    },
    /// Not a Service address: dial it unchanged (Istio's ALLOW_ANY). `workload` is the pod with
    /// that IP, when there is one.
    Passthrough {
        /// The pod with the destination IP, if any (for labels only).
        workload: Option<&'a Arc<Workload>>,
    },
}

/// A ready pod behind a Service port.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Pod IP and resolved `targetPort`.
    pub addr: SocketAddrV4,
    /// The pod.
    pub workload: Arc<Workload>,
}

/// One port of a Service with a ClusterIP.
#[derive(Debug)]
struct ServicePortEntry {
    service: Arc<Service>,
    endpoints: Vec<Endpoint>,
    /// Shared with the next index built for the same Service port, so a State update does
    /// not send every Service's next connection back to its first endpoint.
    cursor: Arc<AtomicUsize>,
}

/// Identifies a Service port across State updates.
type CursorKey = (String, String, u16);

/// Lookups over one [`MeshState`].
#[derive(Debug, Default)]
pub struct MeshIndex {
    by_ip: HashMap<Ipv4Addr, Arc<Workload>>,
    by_uid: HashMap<String, Arc<Workload>>,
    by_cluster_addr: HashMap<SocketAddrV4, ServicePortEntry>,
    /// Sorted by namespace and name, so every lookup that may match several answers the same.
    services: Vec<Arc<Service>>,
    cursors: HashMap<CursorKey, Arc<AtomicUsize>>,
    /// The compiled Istio routing config of the same state.
    routes: RouteTable,
}

impl MeshIndex {
    /// Indexes `state`, keeping `previous`'s round-robin positions. Returns the problems found;
    /// each loses only what it names.
    #[must_use]
    pub fn build(state: &MeshState, previous: &Self) -> (Self, Vec<Error>) {
        let mut errors = Vec::new();
        let workloads: Vec<Arc<Workload>> = state.workloads.iter().cloned().map(Arc::new).collect();

        let mut by_ip: HashMap<Ipv4Addr, Arc<Workload>> = HashMap::new();
        let mut by_uid = HashMap::new();
        for workload in &workloads {
            by_uid.insert(workload.uid.clone(), workload.clone());
            if let Some(ip) = workload.ip {
                // Host-network pods share the node's IP and a finished pod's IP may be reused:
                // a ready pod is the better answer for who owns an IP.
                let replace = by_ip
                    .get(&ip)
                    .is_none_or(|held| !held.ready && workload.ready);
                if replace {
                    by_ip.insert(ip, workload.clone());
                }
            }
        }

        let mut services: Vec<Arc<Service>> =
            state.services.iter().cloned().map(Arc::new).collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut by_cluster_addr: HashMap<SocketAddrV4, ServicePortEntry> = HashMap::new();
        let mut cursors = HashMap::new();
        for service in &services {
            let Some(cluster_ip) = service.cluster_ip else {
                continue;
            };
            for port in service.ports.iter().filter(|p| is_tcp(&p.protocol)) {
                let addr = SocketAddrV4::new(cluster_ip, port.port);
                if let Some(kept) = by_cluster_addr.get(&addr) {
                    errors.push(Error::DuplicateServiceAddress {
                        addr,
                        kept: qualified(&kept.service),
                        ignored: qualified(service),
                    });
                    continue;
                }
                let mut endpoints: Vec<Endpoint> = workloads
                    .iter()
                    .filter(|w| w.ready && selects(service, w))
                    .filter_map(|w| {
                        let ip = w.ip?;
                        let target = target_port(port, w)?;
                        Some(Endpoint {
                            addr: SocketAddrV4::new(ip, target),
                            workload: w.clone(),
                        })
                    })
                    .collect();
                endpoints.sort_by(|a, b| (a.addr, &a.workload.uid).cmp(&(b.addr, &b.workload.uid)));
                let key = (service.namespace.clone(), service.name.clone(), port.port);
                let cursor = previous.cursors.get(&key).cloned().unwrap_or_default();
                cursors.insert(key, cursor.clone());
                by_cluster_addr.insert(
                    addr,
                    ServicePortEntry {
                        service: service.clone(),
                        endpoints,
                        cursor,
                    },
                );
            }
        }

        let (routes, routing_errors) = RouteTable::build(state);
        errors.extend(routing_errors.into_iter().map(Error::Routing));
        let index = Self {
            by_ip,
            by_uid,
            by_cluster_addr,
            services,
            cursors,
            routes,
        };
        (index, errors)
    }

    /// Where a connection to `dst` goes; advances the Service's round robin.
    #[must_use]
    pub fn route(&self, dst: SocketAddr) -> Route<'_> {
        let SocketAddr::V4(dst) = dst else {
            return Route::Passthrough { workload: None };
        };
        match self.by_cluster_addr.get(&dst) {
            Some(entry) if entry.endpoints.is_empty() => Route::NoReadyEndpoints {
                service: &entry.service,
            },
            Some(entry) => {
                let turn = entry.cursor.fetch_add(1, Ordering::Relaxed);
                Route::Service {
                    service: &entry.service,
                    endpoint: &entry.endpoints[turn % entry.endpoints.len()],
                }
            }
            None => Route::Passthrough {
                workload: self.by_ip.get(dst.ip()),
            },
        }
    }

    /// The pod with IP `ip` (a ready one when several share it); `None` for IPv6.
    #[must_use]
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        match ip {
            IpAddr::V4(ip) => self.by_ip.get(&ip),
            IpAddr::V6(_) => None,
        }
    }

    /// The pod with `metadata.uid` (or `namespace/name`) `uid`.
    #[must_use]
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    /// The Service that reaches `workload` on `port`: one selecting the pod with a TCP port
    /// whose `targetPort` resolves to `port` (Istio's `destination_service` for a connection
    /// addressed to the pod itself).
    #[must_use]
    pub fn destination_service(&self, workload: &Workload, port: u16) -> Option<&Arc<Service>> {
        self.services.iter().find(|service| {
            selects(service, workload)
                && service
                    .ports
                    .iter()
                    .any(|p| is_tcp(&p.protocol) && target_port(p, workload) == Some(port))
        })
    }

    /// How many pods the state has (by uid), for the proxy's log.
    #[must_use]
    pub fn workload_count(&self) -> usize {
        self.by_uid.len()
    }

    /// How many Services the state has, for the proxy's log.
    #[must_use]
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The compiled routing config.
    #[must_use]
    pub fn route_table(&self) -> &RouteTable {
        &self.routes
    }
}

impl routing::Routes for MeshIndex {
    fn outbound_target(
        &self,
        dst: SocketAddrV4,
        source: Option<&Workload>,
    ) -> routing::OutboundTarget {
        self.routes.outbound_target(dst, source)
    }

    fn http_route(
        &self,
        target: &routing::OutboundTarget,
        request: &routing::RequestFacts<'_>,
    ) -> routing::HttpDecision {
        self.routes.http_route(target, request)
    }

    fn tcp_route(
        &self,
        target: &routing::OutboundTarget,
        sni: Option<&str>,
        source: Option<&Workload>,
    ) -> routing::TcpDecision {
        self.routes.tcp_route(target, sni, source)
    }

    fn cluster(
        &self,
        destination: &routing::Destination,
        request_port: u16,
        source: Option<&Workload>,
    ) -> Result<Arc<routing::Cluster>, routing::ClusterError> {
        self.routes.cluster(destination, request_port, source)
    }

    fn mesh(&self) -> &routing::MeshSettings {
        self.routes.mesh()
    }
}

fn is_tcp(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case("TCP")
}

fn qualified(service: &Service) -> String {
    format!("{}/{}", service.namespace, service.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::testing::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// shop: web (10.0.0.1), api-a/api-b (10.0.0.2/3, ready), api-c (10.0.0.4, not ready),
    /// db (10.0.0.5, no "http" port). other: api-x (10.0.1.2) with shop's labels.
    fn mesh() -> MeshState {
        let mut api_c = pod("shop", "api-c", [10, 0, 0, 4], "api");
        api_c.ready = false;
        let mut db = pod("shop", "db-0", [10, 0, 0, 5], "db");
        db.ports.clear();
        let mut no_ip = pod("shop", "api-pending", [0, 0, 0, 0], "api");
        no_ip.ip = None;
        let mut udp = service(
            "shop",
            "dns",
            [10, 96, 0, 53],
            "api",
            &[(53, TargetPort::Number(53))],
        );
        udp.ports[0].protocol = "UDP".into();
        let mut selectorless = service(
            "shop",
            "external",
            [10, 96, 0, 9],
            "",
            &[(80, TargetPort::Number(80))],
        );
        selectorless.selector.clear();
        MeshState {
            workloads: vec![
                pod("shop", "web-1", [10, 0, 0, 1], "web"),
                pod("shop", "api-b", [10, 0, 0, 3], "api"),
                pod("shop", "api-a", [10, 0, 0, 2], "api"),
                api_c,
                db,
                no_ip,
                pod("other", "api-x", [10, 0, 1, 2], "api"),
            ],
            services: vec![
                service(
                    "shop",
                    "api",
                    [10, 96, 0, 10],
                    "api",
                    &[
                        (80, TargetPort::Name("http".into())),
                        (9090, TargetPort::Number(9091)),
                    ],
                ),
                service(
                    "shop",
                    "db",
                    [10, 96, 0, 11],
                    "db",
                    &[(5432, TargetPort::Name("http".into()))],
                ),
                udp,
                selectorless,
            ],
            ..Default::default()
        }
    }

    /// What a route says, in strings, for comparing against a table.
    fn describe(route: &Route<'_>) -> String {
        match route {
            Route::Service { service, endpoint } => {
                format!(
                    "{} -> {} ({})",
                    service.name, endpoint.addr, endpoint.workload.name
                )
            }
            Route::NoReadyEndpoints { service } => {
                format!("{} -> no ready endpoints", service.name)
            }
            Route::Passthrough { workload: Some(w) } => format!("passthrough ({})", w.name),
            Route::Passthrough { workload: None } => "passthrough".into(),
        }
    }

    #[test]
    fn routes() {
        let (index, errors) = MeshIndex::build(&mesh(), &MeshIndex::default());
        assert_eq!(errors, vec![]);
        for (dst, expected) in [
            // Named targetPort → the pods' "http" port; ready pods only, in address order.
            (
                "10.96.0.10:80",
                vec![
                    "api -> 10.0.0.2:8080 (api-a)",
                    "api -> 10.0.0.3:8080 (api-b)",
                    "api -> 10.0.0.2:8080 (api-a)",
                ],
            ),
            // Numeric targetPort, its own cursor.
            (
                "10.96.0.10:9090",
                vec![
                    "api -> 10.0.0.2:9091 (api-a)",
                    "api -> 10.0.0.3:9091 (api-b)",
                ],
            ),
            // The only selected pod lacks the named port.
            ("10.96.0.11:5432", vec!["db -> no ready endpoints"]),
            // A port the Service does not expose is not the Service.
            ("10.96.0.10:81", vec!["passthrough"]),
            // UDP ports are not TCP routes; a selector-less Service has no endpoints.
            ("10.96.0.53:53", vec!["passthrough"]),
            ("10.96.0.9:80", vec!["external -> no ready endpoints"]),
            // Pod IPs pass through, naming the pod; unknown addresses pass through.
            ("10.0.0.3:8080", vec!["passthrough (api-b)"]),
            ("10.0.0.4:8080", vec!["passthrough (api-c)"]),
            ("192.0.2.1:443", vec!["passthrough"]),
            ("[2001:db8::1]:443", vec!["passthrough"]),
        ] {
            let got: Vec<String> = (0..expected.len())
                .map(|_| describe(&index.route(addr(dst))))
                .collect();
            assert_eq!(got, expected, "{dst}");
        }
    }

    /// What the proxy's `StateStore` does: each index is built over the one before.
    #[derive(Default)]
    struct StateStore(std::cell::RefCell<Arc<MeshIndex>>);

    impl StateStore {
        fn new() -> Self {
            Self::default()
        }
        fn load(&self) -> Arc<MeshIndex> {
            self.0.borrow().clone()
        }
        fn replace(&self, state: &MeshState) -> Vec<Error> {
            let (index, errors) = MeshIndex::build(state, &self.load());
            *self.0.borrow_mut() = Arc::new(index);
            errors
        }
    }

    #[test]
    fn the_round_robin_position_survives_a_state_update() {
        let store = StateStore::new();
        assert_eq!(store.replace(&mesh()), vec![]);
        let first = describe(&store.load().route(addr("10.96.0.10:80")));
        assert!(first.contains("api-a"), "{first}");
        // A new state (here: one more ready endpoint) continues where the old one stopped.
        let mut updated = mesh();
        updated
            .workloads
            .push(pod("shop", "api-d", [10, 0, 0, 9], "api"));
        assert_eq!(store.replace(&updated), vec![]);
        let next: Vec<String> = (0..3)
            .map(|_| describe(&store.load().route(addr("10.96.0.10:80"))))
            .collect();
        assert_eq!(
            next,
            vec![
                "api -> 10.0.0.3:8080 (api-b)",
                "api -> 10.0.0.9:8080 (api-d)",
                "api -> 10.0.0.2:8080 (api-a)",
            ]
        );
    }

    #[test]
    fn readiness_changes_take_pods_in_and_out_of_rotation() {
        let store = StateStore::new();
        let mut state = mesh();
        for w in &mut state.workloads {
            if w.name == "api-a" || w.name == "api-b" {
                w.ready = false;
            }
        }
        store.replace(&state);
        assert_eq!(
            describe(&store.load().route(addr("10.96.0.10:80"))),
            "api -> no ready endpoints"
        );
        store.replace(&mesh());
        assert!(matches!(
            store.load().route(addr("10.96.0.10:80")),
            Route::Service { .. }
        ));
    }

    #[test]
    fn destination_service_for_a_pod_port() {
        let (index, _) = MeshIndex::build(&mesh(), &MeshIndex::default());
        for (pod_ip, port, expected) in [
            ("10.0.0.2", 8080, Some("api.shop.svc.cluster.local")),
            ("10.0.0.2", 9091, Some("api.shop.svc.cluster.local")),
            // Not ready still names its Service: labels describe, they do not route.
            ("10.0.0.4", 8080, Some("api.shop.svc.cluster.local")),
            ("10.0.0.2", 9090, None),
            // Same labels, other namespace.
            ("10.0.1.2", 8080, None),
            ("10.0.0.1", 8080, None),
        ] {
            let workload = index.workload_by_ip(pod_ip.parse().unwrap()).unwrap();
            assert_eq!(
                index
                    .destination_service(workload, port)
                    .map(|s| s.hostname())
                    .as_deref(),
                expected,
                "{pod_ip}:{port}"
            );
        }
    }

    #[test]
    fn workload_lookups() {
        let mut state = mesh();
        // A host-network pod sharing web-1's IP, not ready: the ready pod keeps the IP.
        let mut host = pod("kube-system", "node-agent", [10, 0, 0, 1], "node-agent");
        host.ready = false;
        state.workloads.push(host);
        let (index, _) = MeshIndex::build(&state, &MeshIndex::default());
        for (ip, expected) in [
            ("10.0.0.1", Some("web-1")),
            ("10.0.1.2", Some("api-x")),
            ("10.9.9.9", None),
        ] {
            assert_eq!(
                index
                    .workload_by_ip(ip.parse().unwrap())
                    .map(|w| w.name.as_str()),
                expected,
                "{ip}"
            );
        }
        assert_eq!(
            index
                .workload_by_uid("uid-shop-db-0")
                .map(|w| w.name.as_str()),
            Some("db-0")
        );
        assert!(index.workload_by_uid("nope").is_none());
        assert_eq!((index.workload_count(), index.service_count()), (8, 4));
    }

    #[test]
    fn a_duplicate_cluster_address_is_reported_and_the_first_service_kept() {
        let mut state = mesh();
        state.services.push(service(
            "shop",
            "aaa",
            [10, 96, 0, 10],
            "web",
            &[(80, TargetPort::Number(80))],
        ));
        let (index, errors) = MeshIndex::build(&state, &MeshIndex::default());
        assert_eq!(
            errors,
            vec![Error::DuplicateServiceAddress {
                addr: "10.96.0.10:80".parse().unwrap(),
                kept: "shop/aaa".into(),
                ignored: "shop/api".into(),
            }]
        );
        assert_eq!(
            describe(&index.route(addr("10.96.0.10:80"))),
            "aaa -> 10.0.0.1:80 (web-1)"
        );
        // The rest of the losing Service still applies.
        assert!(describe(&index.route(addr("10.96.0.10:9090"))).starts_with("api ->"));
        assert!(errors[0].to_string().contains("spec.clusterIP"));
    }
}
