//! The HTTP side of one accepted connection ([`HttpConnection`]): which pod, which side of it
//! ([`Side`]), who the client is, and what its requests share ([`ConnectionMemo`]).
//!
//! The lowest module of `http/` that knows a connection: the exchange records through it,
//! the phases and forwarding read it, the serve loop serves it. The memo's contents are
//! filled by [`super::exchange`] (metric series) and [`super::forward`] (the same-node
//! destination side), which own their meaning; here they are only kept.
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, OnceLock};

use super::limits::StreamWatch;
use crate::addrs::ClientAddr;
use crate::context::ProxyContext;
use crate::pod::Pod;
use crate::response_flag::ResponseFlags;
use crate::telemetry::Reporter;
use crate::telemetry::metrics::RequestMetrics;
use crate::telemetry::security::PeerSecurity;
use crate::upstream::{self, Upstreams};
use shunt_mesh::index::MeshIndex;
use shunt_mesh::model::{Service, Workload};
use shunt_mesh::routing::{Cluster, LoadBalancer, PortProtocol, RouteSource, TrafficPolicy};

/// The HTTP side of one accepted connection.
pub struct HttpConnection {
    pub proxy: Arc<ProxyContext>,
    pub side: Side,
    pub pod: Arc<Pod>,
    /// The upstream clusters of the pod whose netns requests are dialled from.
    pub upstreams: Arc<Upstreams>,
    /// `namespace/name` of the pod (its uid if the state lacks it).
    pub pod_name: String,
    pub client: ClientAddr,
    /// Outbound, where the app was going; inbound, the app's own address and port.
    pub orig_dst: SocketAddrV4,
    /// The client's workload: outbound, the captured pod itself; inbound, the pod at the
    /// client's address when the mesh knows it.
    pub source: Option<Arc<Workload>>,
    /// What repeats request after request on this connection.
    pub memo: ConnectionMemo,
}

impl HttpConnection {
    /// `reporter` of this side's metrics and log lines.
    pub(super) fn reporter(&self) -> Reporter {
        match self.side {
            Side::Outbound { .. } => Reporter::Source,
            Side::Inbound(_) => Reporter::Destination,
        }
    }
}

/// What a keep-alive connection's requests share, kept so each request need not work it out
/// again.
#[derive(Default)]
pub struct ConnectionMemo {
    /// The destination side of the last same-node delivery ([`super::forward`]).
    pub(super) destination_side: Mutex<Option<DestinationSide>>,
    /// The metric series recorded into last ([`super::exchange`]).
    pub(super) request_series: Mutex<Vec<(SeriesKey, RequestMetrics)>>,
    /// `src_addr` and `dst_addr` of the access log, formatted once.
    pub(super) addresses: OnceLock<(String, String)>,
    /// Requests in flight, idleness and the rapid-reset budget ([`super::limits`]).
    pub(super) watch: Arc<StreamWatch>,
}

/// What, besides the connection itself, decides a request's `istio_request*` labels. Comparing
/// it is cheaper than building the labels and hashing them into four metric families on every
/// request ([`super::exchange`] builds and compares it).
pub(super) struct SeriesKey {
    pub(super) destination: Option<Arc<Workload>>,
    pub(super) cluster: Option<Arc<Cluster>>,
    pub(super) target_service: Option<Arc<Service>>,
    pub(super) grpc: bool,
    pub(super) status: u16,
    pub(super) grpc_status: Option<u32>,
    pub(super) flags: ResponseFlags,
    /// Principals and `connection_security_policy`.
    pub(super) security: PeerSecurity,
}

impl SeriesKey {
    /// The same objects (kept alive by the key, so an address is never reused) and values.
    pub(super) fn matches(&self, other: &Self) -> bool {
        fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(self.destination.as_ref(), other.destination.as_ref())
            && same(self.cluster.as_ref(), other.cluster.as_ref())
            && same(self.target_service.as_ref(), other.target_service.as_ref())
            && self.grpc == other.grpc
            && self.status == other.status
            && self.grpc_status == other.grpc_status
            && self.flags == other.flags
            && self.security == other.security
    }
}

/// The destination side of a same-node delivery for one pod and address, valid while the
/// mesh state it was built from is the current one.
pub(super) struct DestinationSide {
    pub(super) index: Arc<MeshIndex>,
    pub(super) pod: Arc<Pod>,
    pub(super) addr: SocketAddrV4,
    pub(super) side: Arc<HttpConnection>,
}

/// Which of the pod's listeners accepted the connection, and what that means for a request.
pub enum Side {
    /// The pod is the client: each request is routed, from a routing snapshot it takes here.
    /// A gateway pod's Gateway port is this side too: its requests are routed by the
    /// VirtualServices bound to the port's Gateways (`gateway`).
    Outbound {
        routes: Arc<dyn RouteSource>,
        gateway: Option<GatewayRoute>,
    },
    /// The pod is the server: each request is handed to its app.
    Inbound(InboundApp),
}

/// Which Gateway port (and, after TLS, which server) a gateway connection came in on.
#[derive(Clone, Debug)]
pub struct GatewayRoute {
    /// `servers[].port.number`.
    pub port: u16,
    /// The server the SNI chose on a terminated TLS port; `None` on a plaintext port, whose
    /// every server contributes its hosts.
    pub server: Option<Arc<shunt_mesh::gateway::GatewayServer>>,
}

/// The app behind an inbound connection.
pub struct InboundApp {
    /// The pod itself (`destination_workload`).
    pub workload: Option<Arc<Workload>>,
    /// `inbound|port||`: passthrough to the original destination, named for the logs and
    /// `/debug/clusters`, with the Service that reaches the port (`destination_service`),
    /// the port's declared protocol and the pod's `version` label.
    pub cluster: Arc<Cluster>,
    /// How the connection's peers were authenticated, as accepted: plaintext unless set
    /// (an HBONE listener sets what its handshake proved; a same-node delivery's destination
    /// side, both pods' identities).
    pub security: PeerSecurity,
}

impl InboundApp {
    /// The app at `port` of `workload`, reached through `service` (when one selects it) whose
    /// port declares `protocol`.
    #[must_use]
    pub fn new(
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
        port: u16,
        protocol: PortProtocol,
    ) -> Self {
        let version = workload
            .as_ref()
            .and_then(|w| w.labels.get("version"))
            .map(|v| Arc::from(v.as_str()));
        let cluster = Arc::new(Cluster {
            key: upstream::inbound_cluster_key(port),
            protocol,
            service,
            endpoints: Vec::new(),
            dns: Vec::new(),
            service_entry: None,
            policy: TrafficPolicy {
                load_balancer: LoadBalancer::Passthrough,
                ..TrafficPolicy::default()
            },
            version,
        });
        Self {
            workload,
            cluster,
            security: PeerSecurity::None,
        }
    }
}
