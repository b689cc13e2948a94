//! Inbound: connections to a captured pod's IP, steered by `sk_lookup` to the pod's
//! `127.0.0.1:15006` (eBPF capture) or REDIRECTed by iptables to its `0.0.0.0:15006`. Delivered
//! to the app from inside the same netns; the source is then the pod's own IP, which
//! `sk_lookup` lets through to the app, and which iptables never sees in PREROUTING.
//!
//! As in Istio's sidecar, the protocol is detected first: the declared protocol of the Service
//! port whose `targetPort` is the connection's port, else the client's first bytes within the
//! detection timeout. HTTP is served request by request ([`crate::http::server`], `reporter`
//! destination); TLS and opaque TCP are forwarded at L4.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::forward::ResetOnClose;
use super::l4::{self, Accepted, Plan};
use super::preamble::{self, Preamble};
use crate::addrs::ClientAddr;
use crate::conn::detect::Protocol;
use crate::context::{PodContext, ProxyContext};
use crate::http::server::{self, HttpConnection, InboundApp, Side};
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{CloseReason, Direction};
use crate::upstream::Transport;
use shunt_mesh::index::MeshIndex;
use shunt_mesh::security::MtlsMode;

/// Serves one connection accepted on `pod`'s inbound listener.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    downstream: TcpStream,
    client: ClientAddr,
) {
    preamble::nodelay(&downstream);
    let index = proxy.state.load();
    let (accepted, orig_dst) = match accept(&proxy, &pod, &index, &downstream, client) {
        Ok(accepted) => accepted,
        Err(plan) => return l4::run(&proxy, &pod, *plan, downstream).await,
    };
    serve_accepted(proxy, pod, accepted, orig_dst, downstream, None).await;
}

/// Detects and serves an inbound connection whose ends are known: from the inbound listener,
/// or an HBONE stream. `connected`: the app connection already made for it (an HBONE stream
/// is answered only once the app is reachable), which an L4 connection uses.
pub(super) async fn serve_accepted<S>(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    accepted: Accepted,
    orig_dst: SocketAddr,
    downstream: S,
    connected: Option<Transport>,
) where
    S: AsyncRead + AsyncWrite + ResetOnClose + Unpin + Send + 'static,
{
    let l4_plan = |accepted: Accepted, connected: Option<Transport>| match connected {
        Some(stream) => accepted.connected(orig_dst, stream),
        None => accepted.dial(orig_dst),
    };
    let SocketAddr::V4(app_addr) = orig_dst else {
        // The HTTP side dials IPv4 endpoints only; IPv6 stays at L4.
        return l4::run(&proxy, &pod, l4_plan(accepted, connected), downstream).await;
    };
    let declared = shunt_mesh::routing::declared_protocol(
        accepted.peers.service.as_deref(),
        accepted.peers.destination.as_deref(),
        app_addr.port(),
    );
    let timeout = preamble::detection_timeout(&proxy, &*proxy.routes.routes());
    let (accepted, protocol, stream) =
        match preamble::detect(&pod, downstream, accepted, declared, timeout).await {
            Preamble::Cut => return,
            Preamble::Refused(plan, downstream) => {
                return l4::run(&proxy, &pod, *plan, downstream).await;
            }
            Preamble::Detected(accepted, protocol, stream) => (*accepted, protocol, stream),
        };
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            // Requests are dialled one by one through the pod's `inbound|port||` pool; the
            // connection that proved the app reachable is not needed.
            drop(connected);
            let mut app = InboundApp::new(
                accepted.peers.destination.clone(),
                accepted.peers.service.clone(),
                app_addr.port(),
                declared,
            );
            app.security = accepted.security.clone();
            let connection = Arc::new(HttpConnection {
                proxy: proxy.clone(),
                side: Side::Inbound(app),
                pod: pod.pod.clone(),
                upstreams: pod.upstreams.clone(),
                pod_name: accepted.pod.clone(),
                client: accepted.client,
                orig_dst: app_addr,
                source: accepted.peers.source.clone(),
                memo: Default::default(),
            });
            server::serve(connection, stream).await;
        }
        Protocol::Tls { sni } => {
            let plan = authorize_l4(&proxy, accepted, app_addr, sni.as_deref(), |accepted| {
                l4_plan(accepted, connected)
            });
            l4::run(&proxy, &pod, plan, stream).await;
        }
        Protocol::Tcp => {
            let plan = authorize_l4(&proxy, accepted, app_addr, None, |accepted| {
                l4_plan(accepted, connected)
            });
            l4::run(&proxy, &pod, plan, stream).await;
        }
    }
}

/// The destination's AuthorizationPolicies for a TCP (or TLS) connection, once detection
/// said it is not HTTP (HTTP is authorized request by request): refused when they deny it,
/// else `plan`, watched so that a later policy that denies it closes it.
pub(super) fn authorize_l4(
    proxy: &ProxyContext,
    mut accepted: Accepted,
    app_addr: std::net::SocketAddrV4,
    sni: Option<&str>,
    plan: impl FnOnce(Accepted) -> Plan,
) -> Plan {
    if accepted.authz.is_some() {
        // Already decided (an HBONE CONNECT whose policies need no HTTP), and watched.
        return plan(accepted);
    }
    match l4::authorize(proxy, &accepted, app_addr, sni) {
        Ok(watched) => {
            accepted.authz = watched;
            plan(accepted)
        }
        Err(reason) => accepted.refuse(CloseReason::Denied, reason),
    }
}

/// What is known of the connection before its first byte: its ends, where it was going, and
/// the Service that reaches that port (and the original destination). `Err`: the plan that
/// refuses it.
pub(super) fn accept(
    proxy: &ProxyContext,
    pod: &PodContext,
    index: &MeshIndex,
    downstream: &TcpStream,
    client: ClientAddr,
) -> Result<(Accepted, SocketAddr), Box<Plan>> {
    let mut accepted = Accepted::new(
        Direction::Inbound,
        Reporter::Destination,
        client,
        index,
        &pod.pod,
    );
    accepted.peers.destination = index.workload_by_uid(pod.pod.uid.as_str()).cloned();
    accepted.peers.source = index.workload_by_ip(client.0.ip()).cloned();
    let orig_dst = match proxy.inbound_dst.orig_dst(downstream, client) {
        Ok(orig_dst) => orig_dst,
        Err(error) => {
            return Err(Box::new(
                accepted.refuse(CloseReason::Error, error.to_string()),
            ));
        }
    };
    accepted.orig_dst = Some(orig_dst);
    if pod.pod.is_proxy_listener(orig_dst.0) {
        // Someone connected to 127.0.0.1:15006 itself: dialling it would reach us again.
        return Err(Box::new(accepted.refuse(
            CloseReason::Error,
            format!(
                "{orig_dst} is the proxy's own listener, not an app port; refused to avoid a loop"
            ),
        )));
    }
    accepted.peers.service = accepted
        .peers
        .destination
        .as_ref()
        .and_then(|w| index.destination_service(w, orig_dst.0.port()))
        .cloned();
    if let Some(refusal) = strict_refusal(proxy, index, &accepted, orig_dst.0.port()) {
        proxy.metrics.peer_authn_refused();
        return Err(Box::new(accepted.refuse(CloseReason::Denied, refusal)));
    }
    Ok((accepted, orig_dst.0))
}

/// Why PeerAuthentication refuses this plaintext connection, if it does: the destination's
/// mode on that port is `STRICT`, and the client is not a pod this proxy serves (whose
/// identity it knows from the netns it dialled from, as with same-node delivery). mTLS
/// clients come through HBONE (15008), never here.
fn strict_refusal(
    proxy: &ProxyContext,
    index: &MeshIndex,
    accepted: &Accepted,
    port: u16,
) -> Option<String> {
    let destination = accepted.peers.destination.as_deref()?;
    let decision = index.peer_authn().explain(destination, port);
    if decision.mode != MtlsMode::Strict {
        return None;
    }
    let served_here = accepted
        .peers
        .source
        .as_ref()
        .is_some_and(|source| proxy.local_pods.serves(&source.uid));
    if served_here {
        return None;
    }
    Some(format!(
        "plaintext connection refused: PeerAuthentication {decision} requires mTLS on port \
         {port}; the client {} is not a meshed pod (send through a captured pod, or relax the \
         policy to PERMISSIVE)",
        accepted.client.0
    ))
}

#[cfg(test)]
mod tests;
