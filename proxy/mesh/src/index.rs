//! The index built from a [`MeshState`] to route and label connections: workloads by IP
//! and uid, Services, and the compiled route table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::ids::PodUid;
use crate::model::{MeshState, Service, Workload, reaches};
use crate::routing::{self, RouteTable};
use crate::security::{AuthzTable, MtlsMode, PeerAuthnTable, RequestAuthnTable};
use crate::spiffe::SpiffeId;

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
    /// A problem in a PeerAuthentication, from [`PeerAuthnTable::build`].
    #[error(transparent)]
    Security(#[from] crate::security::Error),
}

/// Lookups over one [`MeshState`].
#[derive(Debug, Default)]
pub struct MeshIndex {
    by_ip: HashMap<Ipv4Addr, Arc<Workload>>,
    by_uid: HashMap<PodUid, Arc<Workload>>,
    /// Sorted by namespace and name, so every lookup that may match several answers the same.
    services: Vec<Arc<Service>>,
    /// The compiled Istio routing config of the same state.
    routes: RouteTable,
    /// The node the proxy reading this state runs on ([`MeshState::node_name`]).
    node_name: Option<String>,
    /// PeerAuthentication, merged per workload.
    peer_authn: PeerAuthnTable,
    /// AuthorizationPolicy, compiled.
    authz: AuthzTable,
    /// RequestAuthentication: each workload's JWT rules.
    request_authn: RequestAuthnTable,
}

impl MeshIndex {
    /// Indexes `state`. Returns the problems found; each loses only what it names. Connections
    /// are balanced by the route table's clusters, whose state lives in the proxy.
    #[must_use]
    pub fn build(state: &MeshState) -> (Self, Vec<Error>) {
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

        // The route table keeps the first Service by namespace/name for an address, too.
        let mut by_cluster_addr: HashMap<SocketAddrV4, &Arc<Service>> = HashMap::new();
        for service in &services {
            let Some(cluster_ip) = service.cluster_ip else {
                continue;
            };
            for port in service.ports.iter().filter(|p| is_tcp(&p.protocol)) {
                let addr = SocketAddrV4::new(cluster_ip, port.port);
                match by_cluster_addr.get(&addr) {
                    Some(kept) => errors.push(Error::DuplicateServiceAddress {
                        addr,
                        kept: qualified(kept),
                        ignored: qualified(service),
                    }),
                    None => {
                        by_cluster_addr.insert(addr, service);
                    }
                }
            }
        }

        let (routes, routing_errors) = RouteTable::build(state);
        errors.extend(routing_errors.into_iter().map(Error::Routing));
        let (peer_authn, security_errors) = PeerAuthnTable::build(state);
        errors.extend(security_errors.into_iter().map(Error::Security));
        let (authz, authz_errors) = AuthzTable::build(state);
        errors.extend(authz_errors.into_iter().map(Error::Security));
        let (request_authn, authn_errors) = RequestAuthnTable::build(state);
        errors.extend(authn_errors.into_iter().map(Error::Security));
        let index = Self {
            by_ip,
            by_uid,
            services,
            routes,
            node_name: state.node_name.clone(),
            peer_authn,
            authz,
            request_authn,
        };
        (index, errors)
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

    /// The Service that reaches `workload` on `port`: one with a TCP port that reaches the
    /// pod at `port` ([`reaches`]: its EndpointSlices, else its selector and `targetPort`),
    /// Istio's `destination_service` for a connection addressed to the pod itself.
    #[must_use]
    pub fn destination_service(&self, workload: &Workload, port: u16) -> Option<&Arc<Service>> {
        self.services.iter().find(|service| {
            service
                .ports
                .iter()
                .any(|p| is_tcp(&p.protocol) && reaches(service, p, workload, port))
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

    /// The ports gateway pod `uid` serves, when Gateways select it.
    #[must_use]
    pub fn gateway_listeners(
        &self,
        uid: &crate::ids::PodUid,
    ) -> Option<Arc<crate::gateway::GatewayListeners>> {
        self.routes.gateway_listeners(uid)
    }

    /// The Secrets the gateway servers on `node` name (`namespace`, `name`), sorted.
    #[must_use]
    pub fn gateway_credentials(&self, node: &str) -> Vec<(String, String)> {
        self.routes.gateway_credentials(node)
    }

    /// The compiled routing config.
    #[must_use]
    pub fn route_table(&self) -> &RouteTable {
        &self.routes
    }

    /// The node the proxy reading this state runs on; `None` from an agent older than nodes.
    #[must_use]
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// `workload`'s SPIFFE id in the mesh's trust domain; `None` when its namespace or
    /// service account cannot be part of one (such a pod has no identity and gets no mTLS).
    #[must_use]
    pub fn identity(&self, workload: &Workload) -> Option<SpiffeId> {
        SpiffeId::new(
            &self.routes.mesh_settings().trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
        .ok()
    }

    /// PeerAuthentication, merged per workload.
    #[must_use]
    pub fn peer_authn(&self) -> &PeerAuthnTable {
        &self.peer_authn
    }

    /// A ready endpoint of the Service whose FQDN is `host`, at the target of its `port`
    /// (from its EndpointSlices, else a pod its selector picks): what the proxy dials for a
    /// Service it reaches by name outside routing (an ext_authz provider). The lowest
    /// address, so every proxy picks the same one.
    #[must_use]
    pub fn service_pod_addr(&self, host: &str, port: u16) -> Option<SocketAddrV4> {
        let service = self.services.iter().find(|s| s.hostname() == host)?;
        let service_port = service.ports.iter().find(|p| p.port == port)?;
        if let Some(endpoints) = &service_port.endpoints {
            return endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| SocketAddrV4::new(e.address, e.port))
                .min();
        }
        self.by_uid
            .values()
            .filter(|w| w.ready && crate::model::selects(service, w))
            .filter_map(|w| {
                let target = crate::model::target_port(service_port, w)?;
                Some(SocketAddrV4::new(w.ip?, target))
            })
            .min()
    }

    /// RequestAuthentication: the JWT rules each workload's requests are checked against.
    #[must_use]
    pub fn request_authn(&self) -> &RequestAuthnTable {
        &self.request_authn
    }

    /// AuthorizationPolicy: what the destination's policies decide for a connection or a
    /// request.
    #[must_use]
    pub fn authz(&self) -> &AuthzTable {
        &self.authz
    }

    /// Whether PeerAuthentication `DISABLE`s mTLS for inbound connections to `workload`'s
    /// `port`: then senders skip HBONE for it.
    #[must_use]
    pub fn mtls_disabled(&self, workload: &Workload, port: u16) -> bool {
        self.peer_authn.mode(workload, port) == MtlsMode::Disable
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

    fn gateway_target(
        &self,
        pod: &crate::ids::PodUid,
        port: u16,
        server: Option<Arc<crate::gateway::GatewayServer>>,
    ) -> Option<routing::OutboundTarget> {
        self.routes.gateway_target(pod, port, server)
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

    #[test]
    fn destination_service_for_a_pod_port() {
        let (index, _) = MeshIndex::build(&mesh());
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
        let (index, _) = MeshIndex::build(&state);
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
        let (index, errors) = MeshIndex::build(&state);
        assert_eq!(
            errors,
            vec![Error::DuplicateServiceAddress {
                addr: "10.96.0.10:80".parse().unwrap(),
                kept: "shop/aaa".into(),
                ignored: "shop/api".into(),
            }]
        );
        use crate::routing::{OutboundTarget, Routes as _};
        let host = |dst: &str| match index.outbound_target(dst.parse().unwrap(), None) {
            OutboundTarget::Service(target) => target.host.0.to_string(),
            OutboundTarget::Unknown { .. } | OutboundTarget::Gateway(_) => "unknown".into(),
        };
        // The table routes the address as the error says.
        assert_eq!(host("10.96.0.10:80"), "aaa.shop.svc.cluster.local");
        // The rest of the losing Service still applies.
        assert_eq!(host("10.96.0.10:9090"), "api.shop.svc.cluster.local");
        assert!(errors[0].to_string().contains("spec.clusterIP"));
    }
}
