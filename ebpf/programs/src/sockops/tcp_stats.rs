//! Kernel TCP telemetry: a watched socket's RTT, retransmits, losses, bytes and duration,
//! read once when it closes and sent to the proxy through `TCP_EVENTS`.
//!
//! Watched: the sockets whose packets cross the network, that is the proxy's upstream dials
//! (marked, from a captured pod's netns, to neither loopback nor the pod itself) and the
//! connections a captured pod accepts from elsewhere (the proxy's inbound and HBONE
//! listeners). The app↔proxy hop stays on loopback inside the pod: its RTT says nothing of the
//! path. Nothing runs per packet or per RTT: one map update at `ESTABLISHED`, one event at
//! `TCP_CLOSE` (the state callback the shortcut already asks for).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockOpsContext,
};
use shunt_common::{MeshedNetns, SockKey, TcpEvent, TcpStart, stats};

use crate::helpers::{count, is_loopback};
use crate::maps::{TCP_EVENTS, TCP_STARTS};

/// Whether a socket of `pod`'s netns carries a flow over the network: its peer is neither
/// loopback nor the pod's own address (the proxy's same-pod delivery hop).
pub(super) fn crosses_network(pod: &MeshedNetns, key: &SockKey) -> bool {
    !is_loopback(key.remote_ip4_be) && key.remote_ip4_be != pod.pod_ip4_be
}

/// Starts watching the socket: its establishment time, and its state changes.
#[expect(unsafe_code, reason = "calls BPF helpers with the program's context")]
pub(super) fn watch(ctx: &SockOpsContext, kind: u32) {
    // SAFETY: helpers valid for sock_ops, called with the program's context.
    let (socket_cookie, now) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_ktime_get_ns()) };
    let start = TcpStart {
        started_ns: now,
        kind,
        _pad: 0,
    };
    if TCP_STARTS
        .insert(&socket_cookie, &start, u64::from(BPF_ANY))
        .is_err()
    {
        count(stats::TCP_WATCH_FAILED);
        return;
    }
    // Told at TCP_CLOSE. A failure leaves the entry to the LRU; the socket works either way.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// The socket reached `TCP_CLOSE`: when watched, its figures go to user space.
#[expect(
    unsafe_code,
    reason = "calls a BPF helper, reads a map value and context fields"
)]
pub(super) fn closed(ctx: &SockOpsContext, key: &SockKey) {
    // SAFETY: a helper valid for sock_ops, called with the program's context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; only this socket's own callbacks write its entry.
    let Some(start) = (unsafe { TCP_STARTS.get(&socket_cookie) }).copied() else {
        return;
    };
    let _ = TCP_STARTS.remove(&socket_cookie);
    // SAFETY: `ops` is the program's context; each field is read once, as the verifier's
    // context rewrite allows (a full socket in the state callback).
    let event = unsafe {
        let ops = ctx.ops;
        TcpEvent {
            socket_cookie,
            netns_cookie: key.netns_cookie,
            // SAFETY: the same helper as above.
            duration_ns: bpf_ktime_get_ns().wrapping_sub(start.started_ns),
            bytes_acked: read_volatile(addr_of!((*ops).bytes_acked)),
            bytes_received: read_volatile(addr_of!((*ops).bytes_received)),
            // The kernel keeps the smoothed RTT in units of 1/8 µs.
            srtt_us: read_volatile(addr_of!((*ops).srtt_us)) >> 3,
            total_retrans: read_volatile(addr_of!((*ops).total_retrans)),
            lost_out: read_volatile(addr_of!((*ops).lost_out)),
            local_ip4_be: key.local_ip4_be,
            remote_ip4_be: key.remote_ip4_be,
            local_port: key.local_port,
            remote_port: key.remote_port,
            kind: start.kind,
        }
    };
    if TCP_EVENTS.output(&event, 0).is_ok() {
        count(stats::TCP_EVENTS_SENT);
    } else {
        count(stats::TCP_EVENTS_DROPPED);
    }
}
