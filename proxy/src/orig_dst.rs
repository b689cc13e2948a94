//! The original destination of an accepted connection.
//!
//! Outbound: `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the accepted socket. With eBPF capture
//! the `cgroup/getsockopt` program answers it from what `connect4` recorded; behind iptables
//! REDIRECT conntrack answers it. Same call either way.
//!
//! Inbound, one path for both capture modes ([`InboundOrigDst`]): behind iptables REDIRECT,
//! conntrack answers `SO_ORIGINAL_DST`; with eBPF capture `sk_lookup` hands the connection to
//! the listener without rewriting it, nothing answers `SO_ORIGINAL_DST`, and the accepted
//! socket's local address *is* the original destination.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::addrs::{ClientAddr, OrigDstAddr};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no original destination for the connection from {client}: SO_ORIGINAL_DST failed \
         ({source}); only connections redirected by shunt's capture (or iptables REDIRECT) \
         have one, a direct connection to the proxy port does not"
    )]
    NotRedirected {
        client: ClientAddr,
        source: io::Error,
    },
    #[error("cannot read the local address of the connection from {client}: {source}")]
    LocalAddr {
        client: ClientAddr,
        source: io::Error,
    },
}

/// Recovers the original destination of an accepted connection.
pub trait OrigDstSource: Send + Sync {
    fn orig_dst(&self, accepted: &TcpStream, client: ClientAddr) -> Result<OrigDstAddr, Error>;
}

/// `SO_ORIGINAL_DST`: the outbound listener's source.
#[derive(Debug, Default)]
pub struct SoOriginalDst;

impl OrigDstSource for SoOriginalDst {
    fn orig_dst(&self, accepted: &TcpStream, client: ClientAddr) -> Result<OrigDstAddr, Error> {
        so_original_dst(accepted)
            .map(|addr| OrigDstAddr(addr.into()))
            .map_err(|source| Error::NotRedirected { client, source })
    }
}

/// The local address: the inbound listener's source.
#[derive(Debug, Default)]
pub struct LocalAddr;

impl OrigDstSource for LocalAddr {
    fn orig_dst(&self, accepted: &TcpStream, client: ClientAddr) -> Result<OrigDstAddr, Error> {
        accepted
            .local_addr()
            .map(OrigDstAddr)
            .map_err(|source| Error::LocalAddr { client, source })
    }
}

/// The inbound listener's source: `SO_ORIGINAL_DST` when the kernel answers it (iptables
/// REDIRECT), else the local address (eBPF `sk_lookup`). Where conntrack tracks a connection
/// it did not rewrite, the two agree. A direct connection to the listener gets the listener's
/// own address either way, which the caller refuses as a loop.
#[derive(Debug, Default)]
pub struct InboundOrigDst;

impl OrigDstSource for InboundOrigDst {
    fn orig_dst(&self, accepted: &TcpStream, client: ClientAddr) -> Result<OrigDstAddr, Error> {
        match SoOriginalDst.orig_dst(accepted, client) {
            Ok(orig_dst) => Ok(orig_dst),
            Err(_) => LocalAddr.orig_dst(accepted, client),
        }
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on `socket`.
pub fn so_original_dst(socket: &impl AsFd) -> io::Result<SocketAddrV4> {
    let raw = getsockopt(socket, sockopt::OriginalDst).map_err(io::Error::from)?;
    Ok(from_sockaddr_in(&raw))
}

/// `sockaddr_in` keeps address and port in network byte order.
fn from_sockaddr_in(raw: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_app_is_named_by_its_pod_ip_and_its_own_port() {
        let pod_ip = Some(Ipv4Addr::new(10, 244, 0, 10));
        for (peer, pod_ip, expected) in [
            // eBPF capture: the app's socket got a loopback source.
            ("127.0.0.1:40312", pod_ip, "10.244.0.10:40312"),
            // iptables capture keeps the pod IP.
            ("10.244.0.10:40312", pod_ip, "10.244.0.10:40312"),
            // An app bound to another address of its pod is named as it bound.
            ("10.244.0.99:40312", pod_ip, "10.244.0.99:40312"),
            // A pod the mesh has no IP for.
            ("127.0.0.1:40312", None, "127.0.0.1:40312"),
        ] {
            let peer = ClientAddr(peer.parse().unwrap());
            assert_eq!(
                peer.in_pod(pod_ip).to_string(),
                expected,
                "{peer} in {pod_ip:?}"
            );
        }
    }

    #[test]
    fn sockaddr_in_is_read_in_network_byte_order() {
        for (ip, port) in [
            (Ipv4Addr::new(10, 96, 0, 10), 80_u16),
            (Ipv4Addr::new(192, 168, 1, 254), 65535),
            (Ipv4Addr::new(127, 0, 0, 1), 15001),
        ] {
            let raw = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            assert_eq!(from_sockaddr_in(&raw), SocketAddrV4::new(ip, port));
        }
    }

    #[tokio::test]
    async fn a_connection_nobody_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_client, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (accepted, peer) = accepted.unwrap();
        match SoOriginalDst.orig_dst(&accepted, ClientAddr(peer)) {
            Err(err) => assert!(err.to_string().contains(&peer.to_string()), "{err}"),
            // Where conntrack is active it tracked the connection and reports its
            // un-NATed destination: the listener itself.
            Ok(found) => assert_eq!(found, OrigDstAddr(listener.local_addr().unwrap())),
        }
        // The inbound sources need no redirect: the local address is the answer.
        for source in [&LocalAddr as &dyn OrigDstSource, &InboundOrigDst] {
            assert_eq!(
                source.orig_dst(&accepted, ClientAddr(peer)).unwrap(),
                OrigDstAddr(listener.local_addr().unwrap())
            );
        }
    }
}
