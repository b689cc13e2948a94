//! Original destination recovery: cgroup/getsockopt answering SO_ORIGINAL_DST.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use shunt_common::{AF_INET, ClientKey, OUTBOUND_PORT, SO_ORIGINAL_DST, SOL_IP, stats};

use crate::helpers::{CGROUP_ALLOW, HelperError, count, is_loopback, netns_cookie};
use crate::logs::{log_debug, log_warn};
use crate::maps::ORIG_DST_BY_CLIENT;

/// `struct sockaddr_in`, the answer to `SO_ORIGINAL_DST`.
const SOCKADDR_IN_LEN: usize = 16;

#[cgroup_sockopt(getsockopt)]
pub fn shunt_getsockopt(ctx: SockoptContext) -> i32 {
    // Never turn someone else's getsockopt into EPERM.
    match try_getsockopt(&ctx) {
        Ok(()) | Err(HelperError) => CGROUP_ALLOW,
    }
}

/// `struct sockaddr_in`, laid out as user space reads it.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}
const _: () = assert!(size_of::<SockaddrIn>() == SOCKADDR_IN_LEN);

#[expect(
    unsafe_code,
    reason = "reads context and socket fields, a map value, and writes the caller's buffer"
)]
fn try_getsockopt(ctx: &SockoptContext) -> Result<(), HelperError> {
    let opt = ctx.sockopt;
    // SAFETY: `opt` is the program's context; each field is read once at its own width.
    let (level, optname) = unsafe {
        (
            read_volatile(addr_of!((*opt).level)),
            read_volatile(addr_of!((*opt).optname)),
        )
    };
    if level != SOL_IP || optname != SO_ORIGINAL_DST {
        return Ok(());
    }
    // SAFETY: `sk` of a `bpf_sockopt` is always a valid socket (PTR_TO_SOCKET).
    let sk = unsafe { read_volatile(addr_of!((*opt).__bindgen_anon_1.sk)) };
    // SAFETY: `sk` is a valid `bpf_sock`; each field is read once at its own width.
    let (family, peer_ip4_be, peer_port_be, local_ip4_be, local_port) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)),
            read_volatile(addr_of!((*sk).dst_ip4)),
            read_volatile(addr_of!((*sk).dst_port)),
            read_volatile(addr_of!((*sk).src_ip4)),
            read_volatile(addr_of!((*sk).src_port)),
        )
    };
    if family != u32::from(AF_INET) {
        return Ok(());
    }
    let client = ClientKey {
        netns_cookie: netns_cookie(ctx),
        addr: [peer_ip4_be, 0, 0, 0],
        port: u16::from_be(peer_port_be),
        family: AF_INET,
        _pad: [0; 4],
    };
    // SAFETY: copied out at once (see `on_active_established` in sockops.rs).
    let Some(orig_dst) = (unsafe { ORIG_DST_BY_CLIENT.get(&client) }).copied() else {
        count(stats::ORIG_DST_MISSED);
        if is_loopback(local_ip4_be) && local_port == u32::from(OUTBOUND_PORT) {
            // The proxy asks for a connection it accepted on 15001: capture lost its entry.
            log_warn!(
                ctx,
                "netns={} no original destination for the proxy's connection from {:i}:{}",
                client.netns_cookie,
                peer_ip4_be.to_ne_bytes(),
                client.port
            );
        } else {
            log_debug!(
                ctx,
                "netns={} no original destination for {:i}:{} (not captured)",
                client.netns_cookie,
                peer_ip4_be.to_ne_bytes(),
                client.port
            );
        }
        return Ok(());
    };

    // SAFETY: context fields; optval/optval_end bound the kernel's copy of the user buffer.
    let (optval, optval_end) = unsafe {
        (
            read_volatile(addr_of!((*opt).__bindgen_anon_2.optval)),
            read_volatile(addr_of!((*opt).__bindgen_anon_3.optval_end)),
        )
    };
    if (optval as usize).wrapping_add(SOCKADDR_IN_LEN) > optval_end as usize {
        // The caller's buffer cannot hold a sockaddr_in: leave the kernel's answer.
        count(stats::ORIG_DST_MISSED);
        return Ok(());
    }
    let answer = SockaddrIn {
        family: AF_INET,
        port_be: orig_dst.port.to_be(),
        addr_be: orig_dst.addr[0],
        zero: [0; 8],
    };
    // SAFETY: the bounds check above proves SOCKADDR_IN_LEN writable bytes at `optval`;
    // `optlen` and `retval` are writable context fields of a getsockopt program.
    unsafe {
        optval.cast::<SockaddrIn>().write_unaligned(answer);
        write_volatile(addr_of_mut!((*opt).optlen), SOCKADDR_IN_LEN as i32);
        write_volatile(addr_of_mut!((*opt).retval), 0);
    }
    count(stats::ORIG_DST_ANSWERED);
    Ok(())
}
