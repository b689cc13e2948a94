//! Outbound capture: cgroup/connect4, and cgroup/connect6 for IPv4-mapped destinations.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _, bindings::BPF_ANY, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use shunt_common::{
    AF_INET, INBOUND_PORT, MESHED_CAPTURE_OUTBOUND, NetnsPortKey, OUTBOUND_PORT, OrigDst,
    PROXY_MARK, stats,
};

use crate::helpers::{
    CGROUP_ALLOW, HelperError, IPPROTO_TCP, LOCALHOST_BE, count, is_loopback, is_v4_mapped,
    meshed_netns, netns_cookie, socket_mark,
};
use crate::logs::{log_error, log_warn};
use crate::maps::{ORIG_DST_BY_COOKIE, OUTBOUND_EXCLUDED_PORTS};

/// Makes `connect()` fail with `EPERM`.
const CGROUP_REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
/// 15001 as `bpf_sock_addr.user_port` holds it.
const OUTBOUND_PORT_USER: u32 = OUTBOUND_PORT.to_be() as u32;

/// What `connect()` does with a socket.
enum Outbound {
    Untouched,
    /// An app dialling the proxy's ports itself: refused, so it cannot loop through the proxy.
    Refuse,
    /// Captured: the original destination is recorded; the caller rewrites the destination.
    Redirect,
}

#[cgroup_sock_addr(connect4)]
pub fn shunt_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) => verdict,
        // Could not record the original destination: leave the connection alone rather than
        // send it to a proxy that could not tell where it was going.
        Err(HelperError) => CGROUP_ALLOW,
    }
}

#[expect(unsafe_code, reason = "reads and rewrites the context's destination")]
fn try_connect4(ctx: &SockAddrContext) -> Result<i32, HelperError> {
    let addr = ctx.sock_addr;
    // SAFETY: `addr` is the program's context; each field is read once at its own width, as the
    // verifier requires for context accesses.
    let (dst_ip4_be, user_port) = unsafe {
        (
            read_volatile(addr_of!((*addr).user_ip4)),
            read_volatile(addr_of!((*addr).user_port)),
        )
    };
    match decide_outbound(ctx, dst_ip4_be, user_port_host(user_port))? {
        Outbound::Untouched => Ok(CGROUP_ALLOW),
        Outbound::Refuse => Ok(CGROUP_REFUSE),
        Outbound::Redirect => {
            // SAFETY: connect4 may rewrite the destination; both are full 32-bit stores.
            unsafe {
                write_volatile(addr_of_mut!((*addr).user_ip4), LOCALHOST_BE);
                write_volatile(addr_of_mut!((*addr).user_port), OUTBOUND_PORT_USER);
            }
            Ok(CGROUP_ALLOW)
        }
    }
}

/// Dual-stack sockets (`AF_INET6`, e.g. most JVMs) reach IPv4 peers through IPv4-mapped
/// addresses (`::ffff:a.b.c.d`), which only this hook sees. They are captured like connect4's;
/// native IPv6 destinations are left untouched.
#[cgroup_sock_addr(connect6)]
pub fn shunt_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(verdict) => verdict,
        Err(HelperError) => CGROUP_ALLOW,
    }
}

#[expect(unsafe_code, reason = "reads and rewrites the context's destination")]
fn try_connect6(ctx: &SockAddrContext) -> Result<i32, HelperError> {
    let addr = ctx.sock_addr;
    // SAFETY: context fields, each read once with a 32-bit load.
    let (ip6, user_port) = unsafe {
        (
            [
                read_volatile(addr_of!((*addr).user_ip6[0])),
                read_volatile(addr_of!((*addr).user_ip6[1])),
                read_volatile(addr_of!((*addr).user_ip6[2])),
                read_volatile(addr_of!((*addr).user_ip6[3])),
            ],
            read_volatile(addr_of!((*addr).user_port)),
        )
    };
    if !is_v4_mapped(ip6) {
        return Ok(CGROUP_ALLOW);
    }
    match decide_outbound(ctx, ip6[3], user_port_host(user_port))? {
        Outbound::Untouched => Ok(CGROUP_ALLOW),
        Outbound::Refuse => Ok(CGROUP_REFUSE),
        Outbound::Redirect => {
            // SAFETY: connect6 may rewrite the destination; the ::ffff: prefix stays, the last
            // word becomes 127.0.0.1. Full 32-bit stores.
            unsafe {
                write_volatile(addr_of_mut!((*addr).user_ip6[3]), LOCALHOST_BE);
                write_volatile(addr_of_mut!((*addr).user_port), OUTBOUND_PORT_USER);
            }
            Ok(CGROUP_ALLOW)
        }
    }
}

/// The capture decision shared by connect4 and connect6. On `Redirect` the original
/// destination is already in `ORIG_DST_BY_COOKIE`.
#[expect(unsafe_code, reason = "reads context fields and calls a BPF helper")]
fn decide_outbound(
    ctx: &SockAddrContext,
    dst_ip4_be: u32,
    dst_port: u16,
) -> Result<Outbound, HelperError> {
    let addr = ctx.sock_addr;
    // SAFETY: context fields, read once each.
    let (sock_type, protocol) = unsafe {
        (
            read_volatile(addr_of!((*addr).type_)),
            read_volatile(addr_of!((*addr).protocol)),
        )
    };
    if sock_type != SOCK_STREAM || protocol != IPPROTO_TCP {
        return Ok(Outbound::Untouched);
    }
    let netns_cookie = netns_cookie(ctx);
    let Some(pod) = meshed_netns(netns_cookie) else {
        return Ok(Outbound::Untouched);
    };
    if pod.flags & MESHED_CAPTURE_OUTBOUND == 0 {
        return Ok(Outbound::Untouched);
    }
    // SAFETY: `sk` of a `bpf_sock_addr` is always a valid socket (PTR_TO_SOCKET).
    let sk = unsafe { read_volatile(addr_of!((*addr).__bindgen_anon_1.sk)) };
    if socket_mark(sk) == PROXY_MARK {
        return Ok(Outbound::Untouched);
    }
    if is_loopback(dst_ip4_be) || dst_ip4_be == pod.pod_ip4_be {
        if dst_port == OUTBOUND_PORT || dst_port == INBOUND_PORT {
            count(stats::DIRECT_PROXY_CONNECT_REFUSED);
            log_warn!(
                ctx,
                "netns={} refused an app's connect to {:i}:{}, the proxy's own port",
                netns_cookie,
                dst_ip4_be.to_ne_bytes(),
                dst_port
            );
            return Ok(Outbound::Refuse);
        }
        return Ok(Outbound::Untouched);
    }
    let excluded = NetnsPortKey {
        netns_cookie,
        port: dst_port,
        _pad: [0; 6],
    };
    if OUTBOUND_EXCLUDED_PORTS.get_ptr(&excluded).is_some() {
        count(stats::OUTBOUND_EXCLUDED);
        return Ok(Outbound::Untouched);
    }

    // SAFETY: a helper valid for cgroup sock_addr programs, called with the program's context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig_dst = OrigDst {
        addr: [dst_ip4_be, 0, 0, 0],
        port: dst_port,
        family: AF_INET,
    };
    if let Err(errno) = ORIG_DST_BY_COOKIE.insert(&socket_cookie, &orig_dst, u64::from(BPF_ANY)) {
        log_error!(
            ctx,
            "netns={} ORIG_DST_BY_COOKIE refused an entry (errno {}): the connect to {:i}:{} \
             is left uncaptured",
            netns_cookie,
            -errno,
            dst_ip4_be.to_ne_bytes(),
            dst_port
        );
        return Err(HelperError);
    }
    count(stats::OUTBOUND_CAPTURED);
    Ok(Outbound::Redirect)
}

/// `bpf_sock_addr.user_port` holds the network-order port in its low 16 bits.
fn user_port_host(user_port: u32) -> u16 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port is the low 16 bits"
    )]
    let port_be = user_port as u16;
    u16::from_be(port_be)
}
