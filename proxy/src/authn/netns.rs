//! Where the proxy dials a `jwksUri` from: the netns of a pod it serves, as the sidecar of
//! that pod would fetch it, so a JWKS server that is itself a pod (or anything pods reach)
//! answers. Marked, so the dial is not captured. With no pod served yet, from the proxy's own
//! netns ([`super::DirectConnector`]).
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::jwks::{ConnectFuture, Connector};
use crate::state::StateStore;
use crate::upstream::local::LocalPods;

/// How long the TCP connect may take; the fetch's own timeout bounds the rest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials from a served pod's netns: `host` as an IPv4 address, a Service FQDN of the mesh (a
/// ready pod behind it, as [`shunt_mesh::index::MeshIndex::service_pod_addr`] picks), or a
/// name the node's resolver knows.
pub struct PodNetnsConnector {
    pub local: Arc<LocalPods>,
    pub state: Arc<StateStore>,
}

impl Connector for PodNetnsConnector {
    fn connect(&self, host: &str, port: u16) -> ConnectFuture {
        let (host, local, state) = (host.to_owned(), self.local.clone(), self.state.clone());
        Box::pin(async move {
            let Some(pod) = local.any() else {
                return super::DirectConnector.connect(&host, port).await;
            };
            let addr = match host.parse::<Ipv4Addr>() {
                Ok(ip) => SocketAddr::from((ip, port)),
                Err(_) => match state.load().service_pod_addr(&host, port) {
                    Some(addr) => SocketAddr::V4(addr),
                    None => tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .find(SocketAddr::is_ipv4)
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("{host} has no IPv4 address"),
                            )
                        })?,
                },
            };
            pod.sockets
                .connect(addr, CONNECT_TIMEOUT)
                .await
                .map_err(io::Error::other)
        })
    }
}
