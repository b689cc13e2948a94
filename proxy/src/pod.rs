//! A pod this proxy serves, as the lower layers need it: its uid, its sockets (made in its
//! netns), its listeners and its drain. [`crate::context::PodContext`] adds its upstreams.

use std::net::SocketAddr;
use std::sync::Arc;

use shunt_mesh::ids::PodUid;

use crate::drain::Drain;
use crate::socket::PodSockets;

/// Whether a connection to `addr` would land on `listener`. A listener on `0.0.0.0` (the
/// inbound one under iptables capture) is taken to answer on every address of its port.
fn reaches(listener: SocketAddr, addr: SocketAddr) -> bool {
    addr.port() == listener.port() && (listener.ip().is_unspecified() || addr.ip() == listener.ip())
}

/// One captured pod whose listeners this proxy holds.
pub struct Pod {
    pub uid: PodUid,
    pub sockets: Arc<dyn PodSockets>,
    pub outbound_listener: SocketAddr,
    pub inbound_listener: SocketAddr,
    pub drain: Drain,
}

impl Pod {
    /// Whether `addr` is one of the proxy's own listeners: a connection there would loop.
    #[must_use]
    pub fn is_proxy_listener(&self, addr: SocketAddr) -> bool {
        let proxy_port = matches!(
            addr.port(),
            shunt_common::OUTBOUND_PORT | shunt_common::INBOUND_PORT
        );
        (addr.ip().is_loopback() && proxy_port)
            || reaches(self.outbound_listener, addr)
            || reaches(self.inbound_listener, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listener_is_reached_on_any_address_of_its_port() {
        let cases = [
            ("127.0.0.1:15006", "127.0.0.1:15006", true),
            ("127.0.0.1:15006", "10.0.0.7:15006", false),
            ("0.0.0.0:15006", "10.0.0.7:15006", true),
            ("0.0.0.0:15006", "127.0.0.1:15006", true),
            ("0.0.0.0:15006", "10.0.0.7:8080", false),
            ("127.0.0.1:15001", "127.0.0.1:15006", false),
        ];
        for (listener, addr, expected) in cases {
            let (listener, addr) = (listener.parse().unwrap(), addr.parse().unwrap());
            assert_eq!(reaches(listener, addr), expected, "{listener} {addr}");
        }
    }
}
