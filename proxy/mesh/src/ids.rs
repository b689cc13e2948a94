//! Typed identifiers of mesh objects, so that a pod's uid is never mistaken for its name or a
//! namespace on its way through the agent, the control protocol and the proxy.

use std::borrow::Borrow;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A pod's `metadata.uid`, or `namespace/name` when the config gives none (local mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodUid(String);

impl PodUid {
    /// The uid as it was given.
    #[must_use]
    pub fn new(uid: impl Into<String>) -> Self {
        Self(uid.into())
    }

    /// The uid as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Maps keyed by uid can be asked with a `&str` from a message or a test.
impl Borrow<str> for PodUid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for PodUid {
    fn from(uid: String) -> Self {
        Self(uid)
    }
}

impl From<&str> for PodUid {
    fn from(uid: &str) -> Self {
        Self(uid.to_owned())
    }
}

impl PartialEq<str> for PodUid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PodUid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// An endpoint a cluster balances over: a pod's IP and resolved `targetPort`, or a
/// ServiceEntry endpoint's address and port. What the proxy dials for a picked endpoint,
/// kept apart from the original destination (which may be a ClusterIP) and the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointAddr(SocketAddrV4);

impl EndpointAddr {
    /// The endpoint at `ip:port`. IPv4 only, like the registry.
    #[must_use]
    pub fn new(ip: Ipv4Addr, port: u16) -> Self {
        Self(SocketAddrV4::new(ip, port))
    }

    /// The endpoint's IP.
    #[must_use]
    pub fn ip(self) -> Ipv4Addr {
        *self.0.ip()
    }

    /// The endpoint's port.
    #[must_use]
    pub fn port(self) -> u16 {
        self.0.port()
    }

    /// The socket address to dial.
    #[must_use]
    pub fn socket_addr(self) -> SocketAddr {
        SocketAddr::V4(self.0)
    }
}

impl From<EndpointAddr> for SocketAddr {
    fn from(addr: EndpointAddr) -> Self {
        addr.socket_addr()
    }
}

impl From<EndpointAddr> for SocketAddrV4 {
    fn from(addr: EndpointAddr) -> Self {
        addr.0
    }
}

impl From<SocketAddrV4> for EndpointAddr {
    fn from(addr: SocketAddrV4) -> Self {
        Self(addr)
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `namespace/name` of a config object, for logs, `route_name` and `shuntctl`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `"VirtualService"`, `"DestinationRule"`, `"ServiceEntry"` or `"RateLimitPolicy"`.
    pub kind: &'static str,
    /// `metadata.namespace`.
    pub namespace: Arc<str>,
    /// `metadata.name`.
    pub name: Arc<str>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
