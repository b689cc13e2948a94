//! Same-node delivery: the proxy serves every captured pod on the node, so a connection from
//! pod A to pod B on the same node need not cross B's inbound listener. When an upstream
//! dial's address is a pod this proxy serves (captured, its listeners open, the port not in
//! its `excludeInboundPorts`), the dial is made from that pod's netns, exactly as the inbound
//! listener delivers (marked, source = B's IP): one proxy pass instead of two. The dialler
//! then reports the `reporter="destination"` side itself.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::metrics::UpstreamMetrics;
use crate::hbone::{ConnectRequest, Endpoints, Hbone, baggage};
use crate::pod::Pod;
use crate::socket::{BoxFuture, PodSockets};
use crate::state::StateStore;
use crate::upstream::{Delivery, Dial, DialError, Dialed, MeshTls, Transport, Tunnel};
use shunt_mesh::ids::PodUid;
use shunt_mesh::index::MeshIndex;

/// The pods served on this node, by uid, for same-node delivery.
#[derive(Default)]
pub struct LocalPods {
    enabled: bool,
    pods: RwLock<HashMap<PodUid, Arc<Pod>>>,
}

impl LocalPods {
    /// `enabled`: false keeps every request on the two-hop path (`--no-same-node-shortcut`).
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            pods: RwLock::default(),
        }
    }

    /// `pod`'s listeners are open: it may be delivered to.
    pub fn insert(&self, pod: Arc<Pod>) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        pods.insert(pod.uid.clone(), pod);
    }

    /// `pod` is going away; nothing new is delivered to it.
    pub fn remove(&self, pod: &Arc<Pod>) {
        let mut pods = self.pods.write().unwrap_or_else(PoisonError::into_inner);
        if pods.get(&pod.uid).is_some_and(|p| Arc::ptr_eq(p, pod)) {
            pods.remove(&pod.uid);
        }
    }

    /// One pod served here now (any), to dial from when no particular pod asks.
    #[must_use]
    pub fn any(&self) -> Option<Arc<Pod>> {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .next()
            .cloned()
    }

    /// Whether pod `uid` is served by this proxy now.
    #[must_use]
    pub fn serves(&self, uid: &PodUid) -> bool {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(uid)
    }

    /// The served pod that a dial from pod `from` to `addr` can be delivered to directly.
    #[must_use]
    pub fn target(&self, from: &PodUid, index: &MeshIndex, addr: SocketAddr) -> Option<Arc<Pod>> {
        if !self.enabled {
            return None;
        }
        let workload = index.workload_by_ip(addr.ip())?;
        // A pod dialling itself reaches its app without the inbound listener already.
        let proxy_port = matches!(
            addr.port(),
            shunt_common::OUTBOUND_PORT | shunt_common::INBOUND_PORT
        );
        // A pod with CUSTOM authorization or RequestAuthentication takes its inbound pass:
        // its ext_authz checks and its `authn` phase edit the request (headers set, the token
        // removed), which a delivery from the source's side cannot do to a request already
        // built.
        if !workload.captured
            || proxy_port
            || workload.uid == *from
            || workload.excluded_inbound_ports.contains(&addr.port())
            || index.authz().has_custom(workload)
            || index.request_authn().applies(workload)
        {
            return None;
        }
        let pod = self
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&workload.uid)
            .cloned()?;
        (!pod.drain.is_accepting_stopped() && !pod.is_proxy_listener(addr)).then_some(pod)
    }
}

/// A pod's dialler: from its own netns, or from the destination's when [`LocalPods`] says so,
/// or through an HBONE tunnel to a meshed pod on another node ([`hbone_endpoints`]).
pub struct PodDial {
    pub uid: PodUid,
    pub sockets: Arc<dyn PodSockets>,
    pub state: Arc<StateStore>,
    pub local: Arc<LocalPods>,
    pub metrics: Arc<UpstreamMetrics>,
    /// `None`: the proxy has no identities (no CA configured) and sends plaintext everywhere.
    pub hbone: Option<Arc<Hbone>>,
}

/// Whether a dial from pod `from` to `addr` is tunnelled, and between which identities: the
/// destination is a pod captured by shunt on *another* node (its node's proxy holds its
/// HBONE listener), the port is not one of the proxy's own, and the destination's
/// PeerAuthentication does not `DISABLE` mTLS on that port. Everything else (uncaptured
/// pods, external addresses, pods on this node) stays as it was: plaintext, or same-node
/// delivery.
#[must_use]
pub fn hbone_endpoints(index: &MeshIndex, from: &PodUid, addr: SocketAddr) -> Option<Endpoints> {
    let SocketAddr::V4(addr) = addr else {
        return None;
    };
    if matches!(
        addr.port(),
        shunt_common::OUTBOUND_PORT | shunt_common::INBOUND_PORT | shunt_common::HBONE_PORT
    ) {
        return None;
    }
    let destination = index.workload_by_ip((*addr.ip()).into())?;
    let here = index.node_name();
    let remote = destination
        .node
        .as_deref()
        .is_some_and(|node| Some(node) != here);
    if !destination.captured || !remote || index.mtls_disabled(destination, addr.port()) {
        return None;
    }
    let source = index.workload_by_uid(from.as_str())?;
    Some(Endpoints {
        source_identity: index.identity(source)?,
        source_ip: source.ip?,
        destination_identity: index.identity(destination)?,
        destination_ip: *addr.ip(),
    })
}

impl Dial for PodDial {
    fn dial(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        client: Option<SocketAddr>,
        mesh_tls: MeshTls,
    ) -> BoxFuture<'_, Result<Dialed, DialError>> {
        Box::pin(async move {
            // Subscribed before the state is read, so a change in between retires a delivery.
            let changes = self.state.subscribe();
            let index = self.state.load();
            let tunnel = match mesh_tls {
                MeshTls::Disable => None,
                MeshTls::Auto | MeshTls::Require => self
                    .hbone
                    .as_ref()
                    .zip(hbone_endpoints(&index, &self.uid, addr)),
            };
            if let Some((hbone, endpoints)) = tunnel {
                let source = index.workload_by_uid(self.uid.as_str());
                let request = ConnectRequest {
                    authority: addr,
                    client: client.unwrap_or(SocketAddr::from((endpoints.source_ip, 0))),
                    service_host: None,
                    baggage: source
                        .map(|w| baggage(w, &hbone.cluster_id))
                        .unwrap_or_default(),
                    traceparent: None,
                };
                drop(index);
                let stream = hbone
                    .connect(&*self.sockets, &endpoints, &request, timeout)
                    .await?;
                return Ok(Dialed {
                    stream: Transport::Hbone(stream),
                    delivered: None,
                    tunnel: Some(Tunnel {
                        peer_identity: endpoints.destination_identity.to_string().into(),
                    }),
                });
            }
            let target = self.local.target(&self.uid, &index, addr);
            drop(index);
            if mesh_tls == MeshTls::Require && target.is_none() {
                return Err(DialError::MtlsUnavailable { addr });
            }
            let Some(pod) = target else {
                let stream = self.sockets.connect(addr, timeout).await?;
                return Ok(Dialed {
                    stream: stream.into(),
                    delivered: None,
                    tunnel: None,
                });
            };
            let stream = pod.sockets.connect(addr, timeout).await?;
            self.metrics.same_node_connection();
            Ok(Dialed {
                stream: stream.into(),
                delivered: Some(Delivery {
                    pod: Arc::downgrade(&pod),
                    drain: pod.drain.clone(),
                    state: changes,
                }),
                tunnel: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_mesh::istio;
    use shunt_mesh::model::MeshState;
    use shunt_mesh::testing::pod;

    fn index(destination_node: Option<&str>, captured: bool, policy: Option<&str>) -> MeshIndex {
        let mut source = pod("shop", "a", [10, 244, 0, 10], "a");
        source.node = Some("node-0".into());
        source.captured = true;
        let mut destination = pod("shop", "b", [10, 244, 1, 20], "b");
        destination.node = destination_node.map(str::to_owned);
        destination.captured = captured;
        let peer_authentications = policy
            .map(|mode| {
                serde_json::from_value::<istio::PeerAuthentication>(serde_json::json!({
                    "apiVersion": "security.istio.io/v1",
                    "kind": "PeerAuthentication",
                    "metadata": {"name": "default", "namespace": "shop"},
                    "spec": {"mtls": {"mode": mode}},
                }))
                .unwrap()
            })
            .into_iter()
            .collect();
        let state = MeshState {
            workloads: vec![source, destination],
            node_name: Some("node-0".into()),
            peer_authentications,
            ..MeshState::default()
        };
        MeshIndex::build(&state).0
    }

    #[test]
    fn only_meshed_pods_of_other_nodes_get_hbone() {
        let b: SocketAddr = "10.244.1.20:8080".parse().unwrap();
        let from: PodUid = "uid-shop-a".into();
        /// (destination's node, captured, its namespace's PeerAuthentication, addr, tunnelled)
        type Case = (
            Option<&'static str>,
            bool,
            Option<&'static str>,
            SocketAddr,
            bool,
        );
        let cases: &[Case] = &[
            (Some("node-1"), true, None, b, true),
            (Some("node-1"), true, Some("STRICT"), b, true),
            (Some("node-1"), true, Some("DISABLE"), b, false),
            (Some("node-1"), false, None, b, false),
            (Some("node-0"), true, None, b, false),
            (None, true, None, b, false),
            (
                Some("node-1"),
                true,
                None,
                "10.244.1.20:15008".parse().unwrap(),
                false,
            ),
            (
                Some("node-1"),
                true,
                None,
                "192.0.2.1:443".parse().unwrap(),
                false,
            ),
        ];
        for &(node, captured, policy, addr, tunnelled) in cases {
            let index = index(node, captured, policy);
            let got = hbone_endpoints(&index, &from, addr);
            assert_eq!(
                got.is_some(),
                tunnelled,
                "{node:?} {captured} {policy:?} {addr}"
            );
            if let Some(endpoints) = got {
                assert_eq!(
                    endpoints.destination_identity.to_string(),
                    "spiffe://cluster.local/ns/shop/sa/default"
                );
                assert_eq!(endpoints.source_ip, std::net::Ipv4Addr::new(10, 244, 0, 10));
            }
        }
    }

    #[test]
    fn destination_rule_tls_modes_set_the_mesh_tls_preference() {
        use shunt_mesh::routing::UpstreamTls;
        let cases = [
            (None, MeshTls::Auto),
            (Some(UpstreamTls::Disable), MeshTls::Disable),
            (
                Some(UpstreamTls::IstioMutual {
                    sni: None,
                    subject_alt_names: vec![],
                }),
                MeshTls::Require,
            ),
        ];
        for (tls, want) in cases {
            assert_eq!(MeshTls::of(tls.as_ref()), want, "{tls:?}");
        }
    }
}
