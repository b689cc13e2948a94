//! AuthorizationPolicy `CUSTOM`: the HTTP ext_authz check of each provider a matching CUSTOM
//! policy names ([`crate::ext_authz`]), dialled from the destination pod's netns, as the
//! sidecar that runs the check would.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use shunt_mesh::ext_authz::ExtAuthzHttp;
use shunt_mesh::index::MeshIndex;

use crate::ext_authz::{Connecting, Connector};
use crate::socket::PodSockets;

/// Dials a provider's Service from a pod's netns: a ready pod behind it (the Service's FQDN,
/// `host`), or `host` itself when it is an IP address. Marked, so it is not captured again:
/// the check is plaintext, even to a pod on another node.
pub struct PodConnector {
    pub index: Arc<MeshIndex>,
    pub sockets: Arc<dyn PodSockets>,
    /// The dialling pod's uid: its idle check connections are reused by its later checks.
    pub pod: String,
}

impl Connector for PodConnector {
    fn connect<'a>(&'a self, provider: &'a ExtAuthzHttp) -> Connecting<'a> {
        Box::pin(async move {
            let addr = match provider.host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => SocketAddr::from((ip, provider.port)),
                Err(_) => self
                    .index
                    .service_pod_addr(&provider.host, provider.port)
                    .map(SocketAddr::V4)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "no ready pod behind {}:{} (a Service of the mesh, by its FQDN)",
                                provider.host, provider.port
                            ),
                        )
                    })?,
            };
            let stream = self
                .sockets
                .connect(addr, provider.timeout)
                .await
                .map_err(io::Error::other)?;
            Ok(Box::new(stream) as crate::ext_authz::Stream)
        })
    }

    fn reuse_key(&self) -> Option<&str> {
        Some(&self.pod)
    }
}
