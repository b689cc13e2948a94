//! A connection to a gateway pod's Gateway port (`servers[].port.number`, bound on all
//! addresses of the pod's netns by `inpod`): what the outside, or another pod, sends to an
//! Istio ingress or egress gateway.
//!
//! The port's protocol decides: HTTP, HTTP2 and GRPC ports are served as HTTP at once; TCP
//! ports are routed by the bound VirtualServices' `tcp[]` routes; HTTPS and TLS ports read
//! the ClientHello's SNI first, which picks the server (`GatewayPort::server_for_sni`): a
//! `PASSTHROUGH` server routes the still-encrypted bytes by `tls[]` routes, any other
//! terminates with the server's certificate ([`crate::gateway::GatewayTls`]) and then serves
//! HTTP, or TCP for a `TLS` port. From there on a request takes the mesh's outbound path,
//! dialled from the gateway pod's netns, with the gateway as the source workload
//! (`reporter="source"`), as Istio's gateway reports.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::l4::{self, Accepted};
use super::outbound::plan_tcp;
use super::preamble::{self, Preamble};
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::conn::detect::Protocol;
use crate::context::{PodContext, ProxyContext};
use crate::http::server::{self, GatewayRoute, HttpConnection, Side};
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{CloseReason, Direction};
use crate::upstream::ResetOnClose;
use shunt_mesh::gateway::{GatewayPort, GatewayProtocol, GatewayServer, ServerTlsMode};
use shunt_mesh::routing::PortProtocol;

/// Serves one connection accepted on a gateway pod's Gateway port.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    downstream: TcpStream,
    client: ClientAddr,
) {
    preamble::nodelay(&downstream);
    let index = proxy.state.load();
    let gateway = index.workload_by_uid(pod.pod.uid.as_str()).cloned();
    let mut accepted = Accepted::new(
        Direction::Outbound,
        Reporter::Source,
        client,
        &index,
        &pod.pod,
    );
    accepted.peers.source = gateway.clone();
    let local = match downstream.local_addr() {
        Ok(SocketAddr::V4(local)) => local,
        Ok(SocketAddr::V6(_)) | Err(_) => {
            let plan = accepted.refuse(CloseReason::Error, "the gateway port's address is unknown");
            return l4::run(&proxy, &pod, plan, downstream).await;
        }
    };
    accepted.orig_dst = Some(OrigDstAddr(local.into()));
    let port = index.gateway_listeners(&pod.pod.uid).and_then(|listeners| {
        listeners
            .ports
            .iter()
            .find(|p| p.port == local.port())
            .cloned()
    });
    let Some(port) = port else {
        // The port went away between the accept and now; its listener is closing.
        proxy.metrics.gateway.refused(local.port(), "no_server");
        let plan = accepted.refuse(
            CloseReason::Unreachable,
            format!(
                "no Gateway serves port {} of this pod any more",
                local.port()
            ),
        );
        return l4::run(&proxy, &pod, plan, downstream).await;
    };
    match port.protocol {
        GatewayProtocol::Http | GatewayProtocol::Http2 | GatewayProtocol::Grpc => {
            serve_http(&proxy, &pod, &accepted, local, &port, None, downstream).await;
        }
        GatewayProtocol::Tcp => {
            route_tcp(&proxy, &pod, accepted, local, &port, None, None, downstream).await;
        }
        GatewayProtocol::Https | GatewayProtocol::Tls => {
            serve_tls(proxy.clone(), pod, accepted, local, port, downstream).await;
        }
    }
}

/// An HTTPS or TLS port: the SNI picks the server, which passes through or terminates.
async fn serve_tls(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    accepted: Accepted,
    local: SocketAddrV4,
    port: Arc<GatewayPort>,
    downstream: TcpStream,
) {
    let timeout = preamble::detection_timeout(&proxy, &*proxy.routes.routes());
    let (accepted, protocol, stream) =
        match preamble::detect(&pod, downstream, accepted, PortProtocol::Tls, timeout).await {
            Preamble::Cut => return,
            Preamble::Refused(plan, downstream) => {
                return l4::run(&proxy, &pod, *plan, downstream).await;
            }
            Preamble::Detected(accepted, protocol, stream) => (*accepted, protocol, stream),
        };
    let sni = match protocol {
        Protocol::Tls { sni } => sni,
        Protocol::Http1 | Protocol::Http2 | Protocol::Tcp => None,
    };
    let Some(server) = port.server_for_sni(sni.as_deref()).cloned() else {
        proxy.metrics.gateway.refused(port.port, "no_server");
        let plan = accepted.refuse(
            CloseReason::Unreachable,
            format!(
                "no server of Gateway port {} has a host matching SNI {}",
                port.port,
                sni.as_deref().unwrap_or("(none)")
            ),
        );
        return l4::run(&proxy, &pod, plan, stream).await;
    };
    let mode = server.tls.as_ref().and_then(|tls| tls.mode.clone());
    if matches!(mode, Some(ServerTlsMode::Passthrough)) {
        return route_tcp(
            &proxy,
            &pod,
            accepted,
            local,
            &port,
            Some(server),
            sni.as_deref(),
            stream,
        )
        .await;
    }
    let index = proxy.state.load();
    let identity = accepted
        .peers
        .source
        .as_deref()
        .and_then(|gateway| index.identity(gateway));
    let config = proxy
        .gateway_tls
        .server_config(&server, port.protocol, identity.as_ref());
    let handshake = tokio::select! {
        biased;
        () = pod.pod.drain.force_closed() => return,
        handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream) => handshake,
    };
    let tls = match handshake {
        Ok(tls) => tls,
        Err(error) => {
            // The client's certificate, version or suites, or the server's own credential
            // (which `GatewayTls` counts and logs by Secret).
            proxy.metrics.gateway.refused(port.port, "handshake");
            tracing::debug!(
                gateway = %server.gateway,
                port = port.port,
                client = %accepted.client,
                %error,
                "gateway TLS handshake failed"
            );
            return;
        }
    };
    if port.protocol.is_http() {
        serve_http(&proxy, &pod, &accepted, local, &port, Some(server), tls).await;
    } else {
        route_tcp(
            &proxy,
            &pod,
            accepted,
            local,
            &port,
            Some(server),
            sni.as_deref(),
            tls,
        )
        .await;
    }
}

/// Serves HTTP on a gateway port: each request is routed by the VirtualServices bound to the
/// port's Gateways (or, after TLS, to the SNI's server), from the gateway pod.
async fn serve_http<S>(
    proxy: &Arc<ProxyContext>,
    pod: &PodContext,
    accepted: &Accepted,
    local: SocketAddrV4,
    port: &GatewayPort,
    server: Option<Arc<GatewayServer>>,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(HttpConnection {
        proxy: proxy.clone(),
        side: Side::Outbound {
            routes: proxy.routes.clone(),
            gateway: Some(GatewayRoute {
                port: port.port,
                server,
            }),
        },
        pod: pod.pod.clone(),
        upstreams: pod.upstreams.clone(),
        pod_name: accepted.pod.clone(),
        client: accepted.client,
        orig_dst: local,
        source: accepted.peers.source.clone(),
        memo: Default::default(),
    });
    server::serve(connection, stream).await;
}

/// Routes an opaque TCP (or passed-through or terminated TLS) connection by the bound
/// VirtualServices' `tcp[]`/`tls[]` routes.
#[expect(
    clippy::too_many_arguments,
    reason = "the three callers each pass what they learnt of the connection"
)]
async fn route_tcp<S>(
    proxy: &ProxyContext,
    pod: &PodContext,
    accepted: Accepted,
    local: SocketAddrV4,
    port: &GatewayPort,
    server: Option<Arc<GatewayServer>>,
    sni: Option<&str>,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + ResetOnClose + Unpin,
{
    let routes = proxy.routes.routes();
    let Some(target) = routes.gateway_target(&pod.pod.uid, port.port, server) else {
        proxy.metrics.gateway.refused(port.port, "no_route");
        let plan = accepted.refuse(
            CloseReason::Unreachable,
            format!("no Gateway serves port {} of this pod", port.port),
        );
        return l4::run(proxy, pod, plan, stream).await;
    };
    let index = proxy.state.load();
    let plan = plan_tcp(proxy, pod, &index, &*routes, &target, sni, accepted, local).await;
    l4::run(proxy, pod, plan, stream).await;
}
