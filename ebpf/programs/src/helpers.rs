//! What several programs share: verdicts, constants, and small helpers over the context and
//! the maps.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{bindings::bpf_sock, helpers::bpf_get_netns_cookie};
use shunt_common::{AF_INET, AF_INET6, MeshedNetns};

use crate::maps::{MESHED_NETNS, STATS};

/// `cgroup/connect*` and `cgroup/getsockopt` verdicts.
pub(crate) const CGROUP_ALLOW: i32 = 1;

pub(crate) const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 as the kernel stores it: network-order bytes in a `u32`.
pub(crate) const LOCALHOST_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as the kernel stores it.
const V4_MAPPED_WORD_BE: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A helper call failed; every program falls back to leaving the socket untouched.
pub(crate) struct HelperError;

#[expect(unsafe_code, reason = "a BPF helper call")]
pub(crate) fn netns_cookie<C: aya_ebpf::EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: every program type of this crate may call bpf_get_netns_cookie with its context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[expect(unsafe_code, reason = "reads a map value in place")]
pub(crate) fn meshed_netns(netns_cookie: u64) -> Option<MeshedNetns> {
    // SAFETY: the value is copied out at once; the agent writes whole entries.
    unsafe { MESHED_NETNS.get(&netns_cookie) }.copied()
}

#[expect(unsafe_code, reason = "reads a field of a kernel socket")]
pub(crate) fn socket_mark(sk: *mut bpf_sock) -> u32 {
    // SAFETY: callers pass a non-null socket the verifier knows (PTR_TO_SOCKET).
    unsafe { read_volatile(addr_of!((*sk).mark)) }
}

/// An IPv4 connection: `AF_INET`, or a dual-stack `AF_INET6` socket talking to an IPv4-mapped
/// address. For both, the kernel fills the `*_ip4` context fields with the IPv4 addresses.
pub(crate) fn is_ipv4(family: u32, remote_ip6: [u32; 4]) -> bool {
    family == u32::from(AF_INET) || (family == u32::from(AF_INET6) && is_v4_mapped(remote_ip6))
}

/// `::ffff:a.b.c.d`, with the words in network order.
pub(crate) fn is_v4_mapped(ip6: [u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD_BE
}

/// 127.0.0.0/8, with the address in network order.
pub(crate) fn is_loopback(ip4_be: u32) -> bool {
    u32::from_be(ip4_be) >> 24 == 127
}

#[expect(
    unsafe_code,
    reason = "increments a per-CPU counter through a map pointer"
)]
pub(crate) fn count(counter: u32) {
    if let Some(slot) = STATS.get_ptr_mut(counter) {
        // SAFETY: `slot` points at this CPU's counter in a live map. The bpf target has no
        // atomic read-modify-write in Rust; a program preempted mid-increment by another on the
        // same CPU may lose one count, which is acceptable for diagnostics counters.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}
