//! sock_ops: original destination bookkeeping, the shortcut's socket registration, and the
//! kernel TCP telemetry of sockets that cross the network (`tcp_stats`).

mod tcp_stats;

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use shunt_common::{
    AF_INET, ClientKey, MeshedNetns, OUTBOUND_PORT, PROXY_MARK, SETTING_SOCKMAP_SHORTCUT, SockKey,
    TCP_SOCKET_ACCEPTED, TCP_SOCKET_UPSTREAM, stats,
};

use crate::helpers::{
    HelperError, LOCALHOST_BE, count, is_ipv4, is_loopback, meshed_netns, netns_cookie, socket_mark,
};
use crate::logs::log_error;
use crate::maps::{
    ORIG_DST_BY_CLIENT, ORIG_DST_BY_COOKIE, SETTINGS, SHORTCUT_BYPASS, SHORTCUT_BYTES,
    SHORTCUT_SOCKETS, SPLICE_ROUTES, SPLICED_BYTES,
};

/// `sock_ops` programs' return value is ignored for the callbacks used here.
const SOCK_OPS_DONE: u32 = 1;

#[sock_ops]
pub fn shunt_sockops(ctx: SockOpsContext) -> u32 {
    match try_sockops(&ctx) {
        Ok(()) | Err(HelperError) => SOCK_OPS_DONE,
    }
}

#[expect(unsafe_code, reason = "reads context fields")]
fn try_sockops(ctx: &SockOpsContext) -> Result<(), HelperError> {
    let ops = ctx.ops;
    // SAFETY: context fields, each read once with a 32-bit load.
    let remote_ip6 = unsafe {
        [
            read_volatile(addr_of!((*ops).remote_ip6[0])),
            read_volatile(addr_of!((*ops).remote_ip6[1])),
            read_volatile(addr_of!((*ops).remote_ip6[2])),
            read_volatile(addr_of!((*ops).remote_ip6[3])),
        ]
    };
    if !is_ipv4(ctx.family(), remote_ip6) {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ctx),
        BPF_SOCK_OPS_STATE_CB => {
            on_state_change(ctx);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The app's captured socket is connected to the proxy: re-key its original destination by
/// the address the proxy will see as the peer. Then maybe register it for the shortcut.
#[expect(
    unsafe_code,
    reason = "calls a BPF helper and reads a map value in place"
)]
fn on_active_established(ctx: &SockOpsContext) -> Result<(), HelperError> {
    let netns_cookie = netns_cookie(ctx);
    // SAFETY: a helper valid for sock_ops, called with the program's context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once; a concurrent update could only tear a value of
    // a socket that is being replaced, which the cookie rules out.
    if let Some(orig_dst) = unsafe { ORIG_DST_BY_COOKIE.get(&socket_cookie) }.copied() {
        let client = ClientKey {
            netns_cookie,
            addr: [ctx.local_ip4(), 0, 0, 0],
            port: local_port(ctx.local_port()),
            family: AF_INET,
            _pad: [0; 4],
        };
        if let Err(errno) = ORIG_DST_BY_CLIENT.insert(&client, &orig_dst, u64::from(BPF_ANY)) {
            log_error!(
                ctx,
                "netns={} ORIG_DST_BY_CLIENT refused an entry (errno {}): the proxy will not \
                 find the original destination of the connection from port {}",
                netns_cookie,
                -errno,
                client.port
            );
            return Err(HelperError);
        }
        // Already moved; a failure only leaves an entry for the LRU to evict.
        let _ = ORIG_DST_BY_COOKIE.remove(&socket_cookie);
    }

    let key = sock_ops_key(ctx, netns_cookie);
    // The proxy's upstream dial from a captured pod to another pod or node.
    if let Some(pod) = meshed_netns(netns_cookie)
        && tcp_stats::crosses_network(&pod, &key)
        && sock_ops_mark(ctx) == PROXY_MARK
    {
        tcp_stats::watch(ctx, TCP_SOCKET_UPSTREAM);
    }
    let Some(pod) = shortcut_pod(netns_cookie) else {
        return Ok(());
    };
    let to_outbound_listener =
        key.remote_ip4_be == LOCALHOST_BE && key.remote_port == u32::from(OUTBOUND_PORT);
    // The proxy delivering an inbound connection to the app: its marked socket dials the pod's
    // own IP from the pod's own IP.
    let proxy_delivery = key.local_ip4_be == pod.pod_ip4_be
        && key.remote_ip4_be == pod.pod_ip4_be
        && sock_ops_mark(ctx) == PROXY_MARK;
    if to_outbound_listener || proxy_delivery {
        add_shortcut_socket(ctx, key)?;
    }
    Ok(())
}

/// The proxy accepted an app's captured connection (local 127.0.0.1:15001), or the app accepted
/// the proxy's delivery (pod IP to pod IP). The proxy's end of a captured connection is watched
/// until it closes, to drop the connection's `ORIG_DST_BY_CLIENT` entry then. With the shortcut
/// on, either passive end is registered for it.
fn on_passive_established(ctx: &SockOpsContext) -> Result<(), HelperError> {
    let netns_cookie = netns_cookie(ctx);
    let key = sock_ops_key(ctx, netns_cookie);
    let outbound_listener_side = is_outbound_listener_side(&key);
    if outbound_listener_side && ORIG_DST_BY_CLIENT.get_ptr(&peer_client(&key)).is_some() {
        // See `on_state_change`. Without it the entry would only go on LRU eviction, key reuse
        // or the pod's removal; the connection works either way.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
    // A connection into a captured pod from another pod or node.
    if let Some(pod) = meshed_netns(netns_cookie)
        && tcp_stats::crosses_network(&pod, &key)
    {
        tcp_stats::watch(ctx, TCP_SOCKET_ACCEPTED);
    }
    let Some(pod) = shortcut_pod(netns_cookie) else {
        return Ok(());
    };
    let delivery_side = key.local_ip4_be == pod.pod_ip4_be && key.remote_ip4_be == pod.pod_ip4_be;
    if outbound_listener_side || delivery_side {
        add_shortcut_socket(ctx, key)?;
    }
    Ok(())
}

#[expect(
    unsafe_code,
    reason = "hands the context to the sockhash update helper"
)]
fn add_shortcut_socket(ctx: &SockOpsContext, mut key: SockKey) -> Result<(), HelperError> {
    // A new connection may reuse the 4-tuple of one that fell back to the TCP stack, or whose
    // proxy never cleared its byte counts and splice route (it died).
    forget_shortcut_socket(&key);
    let _ = SPLICED_BYTES.remove(&key);
    // SAFETY: `ops` is the program's context, as `bpf_sock_hash_update` requires.
    let ops = unsafe { &mut *ctx.ops };
    if let Err(errno) = SHORTCUT_SOCKETS.update(&mut key, ops, u64::from(BPF_ANY)) {
        log_error!(
            ctx,
            "netns={} SHORTCUT_SOCKETS refused the socket {:i}:{} (errno {}): its hop takes \
             the TCP stack",
            key.netns_cookie,
            key.local_ip4_be.to_ne_bytes(),
            key.local_port,
            -errno
        );
        return Err(HelperError);
    }
    count(stats::SHORTCUT_SOCKETS_ADDED);
    // Told when the socket closes, to drop its entries (see `on_state_change`). Without it the
    // entries would only go on LRU eviction or key reuse; the socket still works either way.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    Ok(())
}

/// A watched socket closed (`TCP_CLOSE`). A shortcut socket's entries go, except
/// `SPLICED_BYTES`, which the proxy reads for the connection's telemetry when the connection
/// ends, and removes then.
///
/// The proxy's end of a captured connection (local 127.0.0.1:15001) takes the connection's
/// `ORIG_DST_BY_CLIENT` entry with it, whether or not the proxy ever asked for it. It is the
/// proxy's socket, not the app's, whose close ends the entry's use: the proxy asks
/// `SO_ORIGINAL_DST` on the socket it accepted, which may be well after the app's socket has
/// closed (an app that connects, writes and closes reaches `TCP_CLOSE` as soon as its FIN is
/// acknowledged, while its connection may still wait in the proxy's accept queue). Once the
/// proxy's socket is closed, nothing can ask for the entry any more: the proxy closed it, or
/// the app reset the connection, so there is no connection left to proxy (iptables would still
/// answer for it, but the proxy could not reply on it). No newer connection's entry
/// is lost: the program runs before the kernel unhashes the socket, so a new connection with
/// the same addresses, which would overwrite the key, cannot be established before this
/// removal; when the proxy's end goes to `TIME_WAIT` instead, this runs in that same step,
/// before the app's socket can have released its port.
///
/// Left to the LRU: an app connection the kernel established but the proxy's listener never
/// turned into a socket (its accept queue was full when the handshake's last ACK came). The
/// agent also drops a pod's entries when the pod goes.
fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let key = sock_ops_key(ctx, netns_cookie(ctx));
        forget_shortcut_socket(&key);
        tcp_stats::closed(ctx, &key);
        if is_outbound_listener_side(&key) {
            // Usually the entry is there; a failed removal has nothing to undo.
            let _ = ORIG_DST_BY_CLIENT.remove(&peer_client(&key));
        }
    }
}

/// A socket of the proxy's outbound listener: 127.0.0.1:15001, or any loopback address.
fn is_outbound_listener_side(key: &SockKey) -> bool {
    is_loopback(key.local_ip4_be) && key.local_port == u32::from(OUTBOUND_PORT)
}

/// The `ORIG_DST_BY_CLIENT` key of a connection the proxy accepted: its peer, the app's socket,
/// as `on_active_established` wrote it and `cgroup/getsockopt` reads it.
fn peer_client(key: &SockKey) -> ClientKey {
    ClientKey {
        netns_cookie: key.netns_cookie,
        addr: [key.remote_ip4_be, 0, 0, 0],
        port: local_port(key.remote_port),
        family: AF_INET,
        _pad: [0; 4],
    }
}

fn forget_shortcut_socket(key: &SockKey) {
    // Each is usually absent already; a failed removal has nothing to undo.
    let _ = SHORTCUT_BYPASS.remove(key);
    let _ = SHORTCUT_BYTES.remove(key);
    let _ = SPLICE_ROUTES.remove(key);
}

/// The pod owning this netns, when the shortcut is switched on and the netns is captured.
fn shortcut_pod(netns_cookie: u64) -> Option<MeshedNetns> {
    let settings = SETTINGS.get(0)?;
    if settings.flags & SETTING_SOCKMAP_SHORTCUT == 0 {
        return None;
    }
    meshed_netns(netns_cookie)
}

fn sock_ops_key(ctx: &SockOpsContext, netns_cookie: u64) -> SockKey {
    SockKey {
        netns_cookie,
        local_ip4_be: ctx.local_ip4(),
        remote_ip4_be: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: u32::from_be(ctx.remote_port()),
    }
}

#[expect(unsafe_code, reason = "reads the context's socket pointer")]
fn sock_ops_mark(ctx: &SockOpsContext) -> u32 {
    // SAFETY: `sk` of a `bpf_sock_ops` is a socket or null (PTR_TO_SOCKET_OR_NULL).
    let sk = unsafe { read_volatile(addr_of!((*ctx.ops).__bindgen_anon_2.sk)) };
    if sk.is_null() { 0 } else { socket_mark(sk) }
}

/// `local_port` fields are host-order `u32`s holding a 16-bit port.
fn local_port(port: u32) -> u16 {
    #[expect(clippy::cast_possible_truncation, reason = "a TCP port fits 16 bits")]
    let port = port as u16;
    port
}
