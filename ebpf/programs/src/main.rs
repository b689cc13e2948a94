//! shunt's capture programs. See ARCHITECTURE.md, "The capture chain".
//!
//! IPv4 only for now, including dual-stack sockets reaching IPv4 peers through IPv4-mapped
//! addresses. The ABI (`OrigDst`, `ClientKey`) already has room for native IPv6.
//!
//! Every program is a thin entry point around a `try_*` function; an error never panics and
//! always takes the verdict that leaves the socket untouched.
//!
//! Byte orders, as the kernel hands them over (little-endian host):
//! - IPv4 addresses are network order everywhere; they are stored as they come (`*_be`).
//! - `bpf_sock_addr.user_port`: network order in the low 16 bits.
//! - `bpf_sock_ops.remote_port`, `sk_msg_md.remote_port`: network order in the HIGH 16 bits
//!   (the kernel shifts the 16-bit value left by 16), so `u32::from_be` yields the host port.
//! - `bpf_sock_ops.local_port`, `sk_msg_md.local_port`, `bpf_sk_lookup.local_port`,
//!   `bpf_sock.src_port`: host order.
//! - `bpf_sock.dst_port`, `bpf_sk_lookup.remote_port`: a network-order 16-bit field.
#![no_std]
#![no_main]

mod maps;

use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_sk_assign,
        bpf_sk_release,
    },
    macros::{cgroup_sock_addr, cgroup_sockopt, sk_lookup, sk_msg, sock_ops},
    maps::LruHashMap,
    programs::{SkLookupContext, SkMsgContext, SockAddrContext, SockOpsContext, SockoptContext},
};
use shunt_common::{
    AF_INET, AF_INET6, ClientKey, INBOUND_PORT, MESHED_CAPTURE_OUTBOUND, MeshedNetns, NetnsPortKey,
    OUTBOUND_PORT, OrigDst, PROXY_MARK, PodPortKey, SETTING_SOCKMAP_SHORTCUT, SO_ORIGINAL_DST,
    SOL_IP, SockKey, stats,
};

use crate::maps::{
    INBOUND_EXCLUDED_PORTS, INBOUND_LISTENERS, MESHED_NETNS, ORIG_DST_BY_CLIENT,
    ORIG_DST_BY_COOKIE, OUTBOUND_EXCLUDED_PORTS, SETTINGS, SHORTCUT_BYPASS, SHORTCUT_BYTES,
    SHORTCUT_SOCKETS, SPLICE_ROUTES, SPLICED_BYTES, STATS,
};

/// `cgroup/connect*` and `cgroup/getsockopt` verdicts.
const CGROUP_ALLOW: i32 = 1;
/// Makes `connect()` fail with `EPERM`.
const CGROUP_REFUSE: i32 = 0;
/// `sock_ops` programs' return value is ignored for the callbacks used here.
const SOCK_OPS_DONE: u32 = 1;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 as the kernel stores it: network-order bytes in a `u32`.
const LOCALHOST_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// 15001 as `bpf_sock_addr.user_port` holds it.
const OUTBOUND_PORT_USER: u32 = OUTBOUND_PORT.to_be() as u32;
/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as the kernel stores it.
const V4_MAPPED_WORD_BE: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// `struct sockaddr_in`, the answer to `SO_ORIGINAL_DST`.
const SOCKADDR_IN_LEN: usize = 16;

/// A helper call failed; every program falls back to leaving the socket untouched.
struct HelperError;

// ---------------------------------------------------------------------------------------------
// Outbound capture: cgroup/connect4, and cgroup/connect6 for IPv4-mapped destinations

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
    ORIG_DST_BY_COOKIE
        .insert(&socket_cookie, &orig_dst, u64::from(BPF_ANY))
        .map_err(|_| HelperError)?;
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

// ---------------------------------------------------------------------------------------------
// Original destination bookkeeping and the shortcut's socket registration: sock_ops

#[sock_ops]
pub fn shunt_sockops(ctx: SockOpsContext) -> u32 {
    match try_sockops(&ctx) {
        Ok(()) | Err(HelperError) => SOCK_OPS_DONE,
    }
}

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
        ORIG_DST_BY_CLIENT
            .insert(&client, &orig_dst, u64::from(BPF_ANY))
            .map_err(|_| HelperError)?;
        // Already moved; a failure only leaves an entry for the LRU to evict.
        let _ = ORIG_DST_BY_COOKIE.remove(&socket_cookie);
    }

    let Some(pod) = shortcut_pod(netns_cookie) else {
        return Ok(());
    };
    let key = sock_ops_key(ctx, netns_cookie);
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
/// the proxy's delivery (pod IP to pod IP): register the passive end for the shortcut.
fn on_passive_established(ctx: &SockOpsContext) -> Result<(), HelperError> {
    let netns_cookie = netns_cookie(ctx);
    let Some(pod) = shortcut_pod(netns_cookie) else {
        return Ok(());
    };
    let key = sock_ops_key(ctx, netns_cookie);
    let outbound_listener_side =
        is_loopback(key.local_ip4_be) && key.local_port == u32::from(OUTBOUND_PORT);
    let delivery_side = key.local_ip4_be == pod.pod_ip4_be && key.remote_ip4_be == pod.pod_ip4_be;
    if outbound_listener_side || delivery_side {
        add_shortcut_socket(ctx, key)?;
    }
    Ok(())
}

fn add_shortcut_socket(ctx: &SockOpsContext, mut key: SockKey) -> Result<(), HelperError> {
    // A new connection may reuse the 4-tuple of one that fell back to the TCP stack, or whose
    // proxy never cleared its byte counts and splice route (it died).
    forget_shortcut_socket(&key);
    let _ = SPLICED_BYTES.remove(&key);
    // SAFETY: `ops` is the program's context, as `bpf_sock_hash_update` requires.
    let ops = unsafe { &mut *ctx.ops };
    SHORTCUT_SOCKETS
        .update(&mut key, ops, u64::from(BPF_ANY))
        .map_err(|_| HelperError)?;
    count(stats::SHORTCUT_SOCKETS_ADDED);
    // Told when the socket closes, to drop its entries (see `on_state_change`). Without it the
    // entries would only go on LRU eviction or key reuse; the socket still works either way.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    Ok(())
}

/// A shortcut socket closed: its entries go, except `SPLICED_BYTES`, which the proxy reads
/// for the connection's telemetry when the connection ends, and removes then.
fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        forget_shortcut_socket(&sock_ops_key(ctx, netns_cookie(ctx)));
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

fn sock_ops_mark(ctx: &SockOpsContext) -> u32 {
    // SAFETY: `sk` of a `bpf_sock_ops` is a socket or null (PTR_TO_SOCKET_OR_NULL).
    let sk = unsafe { read_volatile(addr_of!((*ctx.ops).__bindgen_anon_2.sk)) };
    if sk.is_null() { 0 } else { socket_mark(sk) }
}

// ---------------------------------------------------------------------------------------------
// Same-netns shortcut: sk_msg on SHORTCUT_SOCKETS
//
// Every message of a shortcut socket goes into the receive queue of the other end of its own
// connection (app → proxy, proxy → app), skipping the TCP stack. Once the proxy has spliced an
// opaque TCP connection (SPLICE_ROUTES), an app's messages go into the far app's receive queue
// instead, skipping the proxy as well.

#[sk_msg]
pub fn shunt_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(verdict) => verdict,
        // SK_PASS sends the message through the TCP stack as usual.
        Err(HelperError) => SK_PASS,
    }
}

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
        SHORTCUT_BYPASS
            .insert(&key, &1, u64::from(BPF_ANY))
            .map_err(|_| HelperError)?;
        count(stats::SHORTCUT_FALLBACKS);
    }
    Ok(SK_PASS)
}

// ---------------------------------------------------------------------------------------------
// Original destination recovery: cgroup/getsockopt answering SO_ORIGINAL_DST

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
    let (family, peer_ip4_be, peer_port_be) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)),
            read_volatile(addr_of!((*sk).dst_ip4)),
            read_volatile(addr_of!((*sk).dst_port)),
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
    // SAFETY: copied out at once (see on_active_established).
    let Some(orig_dst) = (unsafe { ORIG_DST_BY_CLIENT.get(&client) }).copied() else {
        count(stats::ORIG_DST_MISSED);
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

// ---------------------------------------------------------------------------------------------
// Inbound capture: sk_lookup, one link per captured pod's netns

#[sk_lookup]
pub fn shunt_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Ok(verdict) => verdict,
        // SK_PASS continues with the regular socket lookup: the connection is untouched.
        Err(HelperError) => SK_PASS,
    }
}

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
        // Not a captured pod's address (or its listener is not registered yet).
        return Ok(SK_PASS);
    }
    let verdict = if local_port == OUTBOUND_PORT || local_port == INBOUND_PORT {
        // Nobody outside the pod talks to the proxy's listeners directly.
        SK_DROP
    } else {
        // SAFETY: `listener` is a referenced listening socket, the context is ours.
        let assigned = unsafe { bpf_sk_assign(ctx.as_ptr(), listener.cast::<c_void>(), 0) };
        count(if assigned == 0 {
            stats::INBOUND_STEERED
        } else {
            stats::INBOUND_STEER_FAILED
        });
        SK_PASS
    };
    // SAFETY: releases the reference taken by the lookup above, exactly once.
    unsafe { bpf_sk_release(listener.cast::<c_void>()) };
    Ok(verdict)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn netns_cookie<C: aya_ebpf::EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: every program type above may call bpf_get_netns_cookie with its context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

fn meshed_netns(netns_cookie: u64) -> Option<MeshedNetns> {
    // SAFETY: the value is copied out at once; the agent writes whole entries.
    unsafe { MESHED_NETNS.get(&netns_cookie) }.copied()
}

fn socket_mark(sk: *mut bpf_sock) -> u32 {
    // SAFETY: callers pass a non-null socket the verifier knows (PTR_TO_SOCKET).
    unsafe { read_volatile(addr_of!((*sk).mark)) }
}

/// An IPv4 connection: `AF_INET`, or a dual-stack `AF_INET6` socket talking to an IPv4-mapped
/// address. For both, the kernel fills the `*_ip4` context fields with the IPv4 addresses.
fn is_ipv4(family: u32, remote_ip6: [u32; 4]) -> bool {
    family == u32::from(AF_INET) || (family == u32::from(AF_INET6) && is_v4_mapped(remote_ip6))
}

/// `::ffff:a.b.c.d`, with the words in network order.
fn is_v4_mapped(ip6: [u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD_BE
}

/// 127.0.0.0/8, with the address in network order.
fn is_loopback(ip4_be: u32) -> bool {
    u32::from_be(ip4_be) >> 24 == 127
}

/// `local_port` fields are host-order `u32`s holding a 16-bit port.
fn local_port(port: u32) -> u16 {
    #[expect(clippy::cast_possible_truncation, reason = "a TCP port fits 16 bits")]
    let port = port as u16;
    port
}

/// Adds `bytes` to `key`'s counter in `map`, creating it. Callers hold the socket's lock, so
/// no other program writes the same entry meanwhile.
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

fn count(counter: u32) {
    if let Some(slot) = STATS.get_ptr_mut(counter) {
        // SAFETY: `slot` points at this CPU's counter in a live map. The bpf target has no
        // atomic read-modify-write in Rust; a program preempted mid-increment by another on the
        // same CPU may lose one count, which is acceptable for diagnostics counters.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}
