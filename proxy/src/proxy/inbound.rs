//! Inbound: connections to a captured pod's IP, steered by `sk_lookup` to the pod's
//! `127.0.0.1:15006` (eBPF capture) or REDIRECTed by iptables to its `0.0.0.0:15006`. Delivered
//! to the app from inside the same netns; the source is then the pod's own IP, which
//! `sk_lookup` lets through to the app, and which iptables never sees in PREROUTING.
#![forbid(unsafe_code)]

use std::sync::Arc;

use tokio::net::TcpStream;

use super::connection::{self, Accepted, Plan};
use super::orig_dst::ClientAddr;
use super::{PodContext, ProxyContext};
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{CloseReason, Direction};

/// Serves one connection accepted on `pod`'s inbound listener.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    downstream: TcpStream,
    client: ClientAddr,
) {
    if let Err(error) = downstream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
    }
    let plan = plan(&proxy, &pod, &downstream, client);
    connection::run(&proxy, &pod, plan, downstream).await;
}

fn plan(
    proxy: &ProxyContext,
    pod: &PodContext,
    downstream: &TcpStream,
    client: ClientAddr,
) -> Plan {
    let index = proxy.state.load();
    let mut accepted = Accepted::new(
        Direction::Inbound,
        Reporter::Destination,
        client,
        &index,
        pod,
    );
    accepted.peers.destination = index.workload_by_uid(&pod.uid).cloned();
    accepted.peers.source = index.workload_by_ip(client.0.ip()).cloned();
    let orig_dst = match proxy.inbound_dst.orig_dst(downstream, client) {
        Ok(orig_dst) => orig_dst,
        Err(error) => return accepted.refuse(CloseReason::Error, error.to_string()),
    };
    accepted.orig_dst = Some(orig_dst);
    if pod.is_proxy_listener(orig_dst.0) {
        // Someone connected to 127.0.0.1:15006 itself: dialling it would reach us again.
        return accepted.refuse(
            CloseReason::Error,
            format!(
                "{orig_dst} is the proxy's own listener, not an app port; refused to avoid a loop"
            ),
        );
    }
    accepted.peers.service = accepted
        .peers
        .destination
        .as_ref()
        .and_then(|w| index.destination_service(w, orig_dst.0.port()))
        .cloned();
    accepted.dial(orig_dst.0)
}
