//! Same-netns shortcut: sk_msg on SHORTCUT_SOCKETS.
//!
//! Every message of a shortcut socket goes into the receive queue of the other end of its own
//! connection (app → proxy, proxy → app), skipping the TCP stack. Once the proxy has spliced an
//! opaque TCP connection (SPLICE_ROUTES), an app's messages go into the far app's receive queue
//! instead, skipping the proxy as well.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_INGRESS, sk_action::SK_PASS},
    macros::sk_msg,
    maps::LruHashMap,
    programs::SkMsgContext,
};
use shunt_common::{SockKey, stats};

use crate::helpers::{HelperError, count, is_ipv4, netns_cookie};
use crate::logs::{log_error, log_info};
use crate::maps::{
    SHORTCUT_BYPASS, SHORTCUT_BYTES, SHORTCUT_SOCKETS, SPLICE_ROUTES, SPLICED_BYTES,
};

#[sk_msg]
pub fn shunt_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(verdict) => verdict,
        // SK_PASS sends the message through the TCP stack as usual.
        Err(HelperError) => SK_PASS,
    }
}

#[expect(
    unsafe_code,
    reason = "reads context fields, map values in place, and counts through a map pointer"
)]
fn try_sk_msg(ctx: &SkMsgContext) -> Result<u32, HelperError> {
    let msg = ctx.msg;
    // SAFETY: `msg` is the program's context; each field is read once at its own width.
    let (family, remote_ip6) = unsafe {
        (
            read_volatile(addr_of!((*msg).family)),
            [
                read_volatile(addr_of!((*msg).remote_ip6[0])),
                read_volatile(addr_of!((*msg).remote_ip6[1])),
                read_volatile(addr_of!((*msg).remote_ip6[2])),
                read_volatile(addr_of!((*msg).remote_ip6[3])),
            ],
        )
    };
    if !is_ipv4(family, remote_ip6) {
        return Ok(SK_PASS);
    }
    // SAFETY: as above.
    let (local_ip4_be, remote_ip4_be, local_port, remote_port) = unsafe {
        (
            read_volatile(addr_of!((*msg).local_ip4)),
            read_volatile(addr_of!((*msg).remote_ip4)),
            read_volatile(addr_of!((*msg).local_port)),
            read_volatile(addr_of!((*msg).remote_port)),
        )
    };
    let key = SockKey {
        netns_cookie: netns_cookie(ctx),
        local_ip4_be,
        remote_ip4_be,
        local_port,
        remote_port: u32::from_be(remote_port),
    };
    if SHORTCUT_BYPASS.get_ptr(&key).is_some() {
        return Ok(SK_PASS);
    }
    let size = u64::from(ctx.size());
    let to_peer = SHORTCUT_BYTES.get_ptr_mut(&key);
    // SAFETY: copied out at once; SPLICE_ROUTES is not preallocated, so an element a program
    // reads is never reused while it reads it (see maps.rs).
    if let Some(route) = unsafe { SPLICE_ROUTES.get(&key) }.copied() {
        // SAFETY: `to_peer` points into a live map element; this socket's sends are
        // serialised by its socket lock, and only they write its entry.
        let sent_to_peer = to_peer.map_or(0, |to_peer| unsafe { *to_peer });
        // Only once the proxy has forwarded everything this socket sent it may a message skip
        // the proxy; otherwise it would overtake bytes still inside the proxy.
        if sent_to_peer == route.forwarded {
            let mut to = route.to;
            if SHORTCUT_SOCKETS.redirect_msg(ctx, &mut to, u64::from(BPF_F_INGRESS))
                == i64::from(SK_PASS)
            {
                add_bytes(&SPLICED_BYTES, &key, size);
                count(stats::SPLICE_REDIRECTS);
                return Ok(SK_PASS);
            }
            // The far app closed its socket: the proxy's path carries on, and says so.
            count(stats::SPLICE_MISSES);
            log_info!(
                ctx,
                "netns={} {:i}:{}: the spliced peer is gone, back through the proxy",
                key.netns_cookie,
                key.local_ip4_be.to_ne_bytes(),
                key.local_port
            );
        }
    }
    let mut peer = key.peer();
    let verdict = SHORTCUT_SOCKETS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS));
    if verdict == i64::from(SK_PASS) {
        count(stats::SHORTCUT_REDIRECTS);
        match to_peer {
            // SAFETY: as above.
            Some(to_peer) => unsafe { *to_peer = (*to_peer).wrapping_add(size) },
            // A failed insert (ENOMEM) loses the count, which only means the proxy never
            // splices this socket.
            None => {
                let _ = SHORTCUT_BYTES.insert(&key, &size, u64::from(BPF_ANY));
            }
        }
    } else {
        // No peer yet: this message takes the TCP stack, and so must every later one, or the
        // peer could read later redirected bytes before these.
        if let Err(errno) = SHORTCUT_BYPASS.insert(&key, &1, u64::from(BPF_ANY)) {
            log_error!(
                ctx,
                "netns={} SHORTCUT_BYPASS refused an entry (errno {})",
                key.netns_cookie,
                -errno
            );
            return Err(HelperError);
        }
        count(stats::SHORTCUT_FALLBACKS);
        log_info!(
            ctx,
            "netns={} {:i}:{} -> {:i}:{} falls back to the TCP stack: its peer was not in \
             SHORTCUT_SOCKETS at its first message",
            key.netns_cookie,
            key.local_ip4_be.to_ne_bytes(),
            key.local_port,
            key.remote_ip4_be.to_ne_bytes(),
            key.remote_port
        );
    }
    Ok(SK_PASS)
}

/// Adds `bytes` to `key`'s counter in `map`, creating it. Callers hold the socket's lock, so
/// no other program writes the same entry meanwhile.
#[expect(unsafe_code, reason = "increments a counter through a map pointer")]
fn add_bytes(map: &LruHashMap<SockKey, u64>, key: &SockKey, bytes: u64) {
    match map.get_ptr_mut(key) {
        // SAFETY: a live map element; see above for why the increment is not torn.
        Some(total) => unsafe { *total = (*total).wrapping_add(bytes) },
        None => {
            // A failed insert (ENOMEM) loses these bytes from the connection's telemetry.
            let _ = map.insert(key, &bytes, u64::from(BPF_ANY));
        }
    }
}
