//! Outbound: connections an app in a captured pod opened, redirected to the pod's
//! `127.0.0.1:15001`. Dialled from the same pod's netns, so the server sees the pod's IP.
//!
//! The connection's protocol is detected first (routes from [`ProxyContext::routes`]): HTTP goes to the HTTP proxy ([`crate::http::server`]), which routes every request;
//! TLS is routed by its SNI and opaque TCP by `tcp[]` routes, then forwarded at L4 to an
//! endpoint of the chosen cluster, within its DestinationRule as Envoy's tcp_proxy
//! (`maxConnections`, `connectTimeout`, least-request counts, outlier detection).
#![forbid(unsafe_code)]

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::l4::{self, Accepted, Plan};
use super::preamble::{self, Preamble};
use crate::addrs::ClientAddr;
use crate::conn::detect::Protocol;
use crate::context::{PodContext, ProxyContext};
use crate::http::route_policy as policy;
use crate::http::server::{self, HttpConnection, Side};
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{CloseReason, Direction};
use crate::upstream;
use shunt_mesh::index::MeshIndex;
use shunt_mesh::routing::{LoadBalancer, OutboundTarget, PortProtocol, Routes, TcpDecision};

/// Serves one connection accepted on `pod`'s outbound listener.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    downstream: TcpStream,
    client: ClientAddr,
) {
    preamble::nodelay(&downstream);
    let index = proxy.state.load();
    let source = index.workload_by_uid(pod.pod.uid.as_str()).cloned();
    let peer = client;
    let client = peer.in_pod(source.as_ref().and_then(|w| w.ip));
    let mut accepted = Accepted::new(
        Direction::Outbound,
        Reporter::Source,
        client,
        &index,
        &pod.pod,
    );
    accepted.peers.source = source;
    let orig_dst = match proxy.outbound_dst.orig_dst(&downstream, peer) {
        Ok(orig_dst) => orig_dst,
        Err(error) => {
            let plan = accepted.refuse(CloseReason::Error, error.to_string());
            return l4::run(&proxy, &pod, plan, downstream).await;
        }
    };
    accepted.orig_dst = Some(orig_dst);
    if pod.pod.is_proxy_listener(orig_dst.0) {
        // connect4 refuses apps that dial the proxy ports; this catches anything that slips
        // past it (a REDIRECT rule without the mark exemption, a bug) before it loops.
        let plan = accepted.refuse(
            CloseReason::Error,
            format!("original destination {orig_dst} is the proxy's own listener; refused to avoid a loop"),
        );
        return l4::run(&proxy, &pod, plan, downstream).await;
    }
    let SocketAddr::V4(dst) = orig_dst.0 else {
        // The registry is IPv4 only: an IPv6 destination is nobody's Service (ALLOW_ANY).
        accepted.client_app = proxy.splice.client_app(&downstream);
        let plan = plan_passthrough(&index, accepted, orig_dst.0);
        return l4::run(&proxy, &pod, plan, downstream).await;
    };
    let source = &proxy.routes;
    let routes = source.routes();
    let target = routes.outbound_target(dst, accepted.peers.source.as_deref());
    let declared = match &target {
        OutboundTarget::Service(service) => service.protocol,
        OutboundTarget::Unknown { protocol, .. } => *protocol,
        // Only a gateway port's connection has a gateway target (`conn/gateway.rs`).
        OutboundTarget::Gateway(_) => PortProtocol::Sniff,
    };
    let timeout = preamble::detection_timeout(&proxy, &*routes);
    let (mut accepted, protocol, stream) =
        match preamble::detect(&pod, downstream, accepted, declared, timeout).await {
            Preamble::Cut => return,
            Preamble::Refused(plan, downstream) => {
                return l4::run(&proxy, &pod, *plan, downstream).await;
            }
            Preamble::Detected(accepted, protocol, stream) => (*accepted, protocol, stream),
        };
    let sni = match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let connection = Arc::new(HttpConnection {
                proxy: proxy.clone(),
                side: Side::Outbound {
                    routes: source.clone(),
                    gateway: None,
                },
                pod: pod.pod.clone(),
                upstreams: pod.upstreams.clone(),
                pod_name: accepted.pod.clone(),
                client,
                orig_dst: dst,
                source: accepted.peers.source.clone(),
                memo: Default::default(),
            });
            return server::serve(connection, stream).await;
        }
        Protocol::Tls { sni } => sni,
        Protocol::Tcp => None,
    };
    // Only forwarded bytes can be spliced, so HTTP never pays for the socket lookups.
    accepted.client_app = proxy.splice.client_app(stream.inner());
    let plan = plan_tcp(
        &proxy,
        &pod,
        &index,
        &*routes,
        &target,
        sni.as_deref(),
        accepted,
        dst,
    )
    .await;
    l4::run(&proxy, &pod, plan, stream).await;
}

/// Routes an opaque TCP or TLS connection by the `tcp[]` / `tls[]` routes of its destination.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the same values"
)]
pub(super) async fn plan_tcp(
    proxy: &ProxyContext,
    pod: &PodContext,
    index: &MeshIndex,
    routes: &dyn Routes,
    target: &OutboundTarget,
    sni: Option<&str>,
    mut accepted: Accepted,
    dst: SocketAddrV4,
) -> Plan {
    let source = accepted.peers.source.clone();
    match routes.tcp_route(target, sni, source.as_deref()) {
        TcpDecision::Passthrough => plan_passthrough(index, accepted, dst.into()),
        TcpDecision::NoRoute => accepted.refuse(
            CloseReason::Unreachable,
            "no tcp or tls route of a VirtualService bound to the Gateway matches",
        ),
        TcpDecision::BlockedByRegistryOnly => {
            proxy.metrics.registry_only_blocked("tcp");
            accepted.refuse(
                CloseReason::Unreachable,
                format!(
                    "{dst} is not in the service registry and outboundTrafficPolicy is \
                     REGISTRY_ONLY (add a ServiceEntry for it)"
                ),
            )
        }
        TcpDecision::Forward {
            route_name,
            destinations,
            ..
        } => {
            let Some(destination) = policy::pick_weighted(&destinations, &mut rand::rng()) else {
                return accepted.refuse(
                    CloseReason::Unreachable,
                    format!("route {route_name} has no destination"),
                );
            };
            let cluster =
                match routes.cluster(&destination.destination, dst.port(), source.as_deref()) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        return accepted.refuse(
                            CloseReason::Unreachable,
                            format!("route {route_name}: {error}"),
                        );
                    }
                };
            accepted.peers.service = cluster.service.clone();
            let hash = match &cluster.policy.load_balancer {
                LoadBalancer::Passthrough => {
                    return plan_passthrough(index, accepted, dst.into());
                }
                // The only hash key an opaque connection has is its source.
                LoadBalancer::ConsistentHash { .. } => source
                    .as_ref()
                    .and_then(|w| w.ip)
                    .map(|ip| upstream::hash_bytes(ip.to_string().as_bytes())),
                _ => None,
            };
            let state = pod.upstreams.cluster(&cluster);
            // A DNS ServiceEntry's names, resolved before the pick.
            match state.resolve().await.and_then(|()| state.pick(hash, &[])) {
                Ok(picked) => {
                    accepted.peers.destination = picked.workload.clone();
                    accepted.dial_endpoint(state, picked)
                }
                Err(error) => accepted.refuse(CloseReason::Unreachable, error.to_string()),
            }
        }
    }
}

/// Dials the original destination unchanged.
fn plan_passthrough(index: &MeshIndex, mut accepted: Accepted, dst: SocketAddr) -> Plan {
    let workload = index.workload_by_ip(dst.ip());
    accepted.peers.destination = workload.cloned();
    accepted.peers.service = workload
        .and_then(|w| index.destination_service(w, dst.port()))
        .cloned();
    accepted.dial(dst)
}

#[cfg(test)]
mod tests;
