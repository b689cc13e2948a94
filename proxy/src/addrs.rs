//! Typed socket addresses, so that a client, an original destination and an endpoint are
//! never mixed up on the way through the proxy.

use std::fmt;
use std::net::SocketAddr;

/// Where the client meant to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

impl fmt::Display for OrigDstAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client's address, as the accepted socket sees its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// The address of an app in the pod at `pod_ip`, as the mesh names it. eBPF capture
    /// rewrites the app's connect to the pod's own `127.0.0.1:15001`, so the kernel gives the
    /// app's socket a loopback source; the app is still the pod at its pod IP, on the port it
    /// holds (what Envoy logs under iptables capture, which keeps the pod IP). Anything else
    /// is kept as accepted.
    #[must_use]
    pub fn in_pod(self, pod_ip: Option<std::net::Ipv4Addr>) -> Self {
        match pod_ip {
            Some(ip) if self.0.ip().is_loopback() => Self((ip, self.0.port()).into()),
            _ => self,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
