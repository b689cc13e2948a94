//! Inbound capture: sk_lookup, one link per captured pod's netns.

use core::{
    ffi::c_void,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        bpf_sock,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use shunt_common::{AF_INET, HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, PodPortKey, stats};

use crate::helpers::{HelperError, IPPROTO_TCP, count};
use crate::logs::{log_error, log_warn};
use crate::maps::{INBOUND_EXCLUDED_PORTS, INBOUND_FAIL_CLOSED, INBOUND_LISTENERS};

#[sk_lookup]
pub fn shunt_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Ok(verdict) => verdict,
        // SK_PASS continues with the regular socket lookup: the connection is untouched.
        Err(HelperError) => SK_PASS,
    }
}

#[expect(
    unsafe_code,
    reason = "reads context fields; looks up, assigns and releases a referenced socket"
)]
fn try_sk_lookup(ctx: &SkLookupContext) -> Result<u32, HelperError> {
    let lookup = ctx.lookup;
    // SAFETY: `lookup` is the program's context; each field is read once at its own width.
    let (family, protocol, local_ip4_be, remote_ip4_be, local_port) = unsafe {
        (
            read_volatile(addr_of!((*lookup).family)),
            read_volatile(addr_of!((*lookup).protocol)),
            read_volatile(addr_of!((*lookup).local_ip4)),
            read_volatile(addr_of!((*lookup).remote_ip4)),
            read_volatile(addr_of!((*lookup).local_port)),
        )
    };
    if family != u32::from(AF_INET) || protocol != IPPROTO_TCP {
        return Ok(SK_PASS);
    }
    // The pod connecting to itself: that is how the proxy delivers inbound connections.
    if remote_ip4_be == local_ip4_be {
        return Ok(SK_PASS);
    }
    #[expect(clippy::cast_possible_truncation, reason = "a TCP port fits 16 bits")]
    let local_port = local_port as u16;
    // HBONE: the proxy's own `<pod IP>:15008` listener, which the regular lookup finds.
    if local_port == HBONE_PORT {
        return Ok(SK_PASS);
    }
    let excluded = PodPortKey {
        pod_ip4_be: local_ip4_be,
        port: local_port,
        _pad: [0; 2],
    };
    if INBOUND_EXCLUDED_PORTS.get_ptr(&excluded).is_some() {
        return Ok(SK_PASS);
    }

    // SAFETY: a sockhash lookup from sk_lookup returns a referenced socket or null; every path
    // below releases it.
    let listener = unsafe {
        bpf_map_lookup_elem(
            core::ptr::from_ref(&INBOUND_LISTENERS)
                .cast_mut()
                .cast::<c_void>(),
            core::ptr::from_ref(&local_ip4_be).cast::<c_void>(),
        )
    }
    .cast::<bpf_sock>();
    if listener.is_null() {
        // Not a captured pod's address, or its listener is not registered (yet, or any more:
        // the proxy is gone). A fail-closed pod's connections never reach the app unchecked.
        // SAFETY: a hash map lookup from the program; the value is only tested for presence.
        if unsafe { INBOUND_FAIL_CLOSED.get(&local_ip4_be) }.is_some() {
            log_warn!(
                ctx,
                "pod_ip={:i} dropped a connection to port {}: the pod fails closed and the proxy's listener is absent",
                local_ip4_be.to_ne_bytes(),
                local_port
            );
            count(stats::INBOUND_FAIL_CLOSED_DROPS);
            return Ok(SK_DROP);
        }
        return Ok(SK_PASS);
    }
    let verdict = if local_port == OUTBOUND_PORT || local_port == INBOUND_PORT {
        // Nobody outside the pod talks to the proxy's listeners directly.
        log_warn!(
            ctx,
            "pod_ip={:i} dropped a connection to the proxy's own port {}",
            local_ip4_be.to_ne_bytes(),
            local_port
        );
        SK_DROP
    } else {
        // SAFETY: `listener` is a referenced listening socket, the context is ours.
        let assigned = unsafe { bpf_sk_assign(ctx.as_ptr(), listener.cast::<c_void>(), 0) };
        count(if assigned == 0 {
            stats::INBOUND_STEERED
        } else {
            log_error!(
                ctx,
                "pod_ip={:i} could not steer a connection to port {} to the proxy (errno {})",
                local_ip4_be.to_ne_bytes(),
                local_port,
                -assigned
            );
            stats::INBOUND_STEER_FAILED
        });
        SK_PASS
    };
    // SAFETY: releases the reference taken by the lookup above, exactly once.
    unsafe { bpf_sk_release(listener.cast::<c_void>()) };
    Ok(verdict)
}
