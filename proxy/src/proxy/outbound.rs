//! Outbound: connections an app in a captured pod opened, redirected to the pod's
//! `127.0.0.1:15001`. Dialled from the same pod's netns, so the server sees the pod's IP.
#![forbid(unsafe_code)]

use std::sync::Arc;

use tokio::net::TcpStream;

use super::connection::{self, Accepted, Plan};
use super::orig_dst::ClientAddr;
use super::{PodContext, ProxyContext};
use crate::state::Route;
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{CloseReason, Direction};

/// Serves one connection accepted on `pod`'s outbound listener.
pub async fn serve(
    proxy: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    downstream: TcpStream,
    client: ClientAddr,
) {
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
    let mut accepted = Accepted::new(Direction::Outbound, Reporter::Source, client, &index, pod);
    accepted.peers.source = index.workload_by_uid(&pod.uid).cloned();
    let orig_dst = match proxy.outbound_dst.orig_dst(downstream, client) {
        Ok(orig_dst) => orig_dst,
        Err(error) => return accepted.refuse(CloseReason::Error, error.to_string()),
    };
    accepted.orig_dst = Some(orig_dst);
    if pod.is_proxy_listener(orig_dst.0) {
        // connect4 refuses apps that dial the proxy ports; this catches anything that slips
        // past it (a REDIRECT rule without the mark exemption, a bug) before it loops.
        return accepted.refuse(
            CloseReason::Error,
            format!("original destination {orig_dst} is the proxy's own listener; refused to avoid a loop"),
        );
    }
    match index.route(orig_dst.0) {
        Route::Service { service, endpoint } => {
            accepted.peers.destination = Some(endpoint.workload.clone());
            accepted.peers.service = Some(service.clone());
            accepted.dial(endpoint.addr.into())
        }
        Route::NoReadyEndpoints { service } => {
            accepted.peers.service = Some(service.clone());
            let error = format!(
                "no ready endpoints for Service {}/{} port {}",
                service.namespace,
                service.name,
                orig_dst.0.port()
            );
            accepted.refuse(CloseReason::Unreachable, error)
        }
        Route::Passthrough { workload } => {
            accepted.peers.destination = workload.cloned();
            accepted.peers.service = workload
                .and_then(|w| index.destination_service(w, orig_dst.0.port()))
                .cloned();
            accepted.dial(orig_dst.0)
        }
    }
}
