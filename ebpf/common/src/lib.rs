//! The ABI between shunt's eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]`, has no `bool`, spells its padding out, and is guarded by a
//! size assertion, because the kernel side and user space must agree byte for byte.
//!
//! Byte order: IPv4 addresses are kept as the kernel hands them to programs, in network byte
//! order inside a `u32` (`*_be` fields); ports are kept in host byte order.
#![no_std]
#![deny(unsafe_code)]

/// Port of the proxy's outbound listener, `127.0.0.1:15001` inside each captured pod's netns.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the proxy's inbound listener, `127.0.0.1:15006` inside each captured pod's netns.
pub const INBOUND_PORT: u16 = 15006;
/// Port of the proxy's HBONE (mTLS tunnel) listener, `<pod IP>:15008` inside each captured
/// pod's netns, as ztunnel's. `sk_lookup` leaves it to the normal socket lookup, which finds
/// that listener, so it is never captured as ordinary inbound traffic.
pub const HBONE_PORT: u16 = 15008;
/// `SO_MARK` carried by every socket the proxy dials. The programs never capture a socket that
/// carries it, which is what keeps the proxy from capturing its own traffic. The value is
/// Istio's (1337), so that rules written for Istio's proxy mark keep working.
pub const PROXY_MARK: u32 = 0x539;

/// `SOL_IP` / `SO_ORIGINAL_DST`, as answered by the `cgroup/getsockopt` program.
pub const SOL_IP: i32 = 0;
pub const SO_ORIGINAL_DST: i32 = 80;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Map names, as declared in `ebpf/programs/src/maps.rs` and looked up by the agent.
pub mod map_names {
    pub const MESHED_NETNS: &str = "MESHED_NETNS";
    pub const OUTBOUND_EXCLUDED_PORTS: &str = "OUTBOUND_EXCLUDED_PORTS";
    pub const INBOUND_EXCLUDED_PORTS: &str = "INBOUND_EXCLUDED_PORTS";
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    pub const INBOUND_FAIL_CLOSED: &str = "INBOUND_FAIL_CLOSED";
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    pub const ORIG_DST_BY_CLIENT: &str = "ORIG_DST_BY_CLIENT";
    pub const SHORTCUT_SOCKETS: &str = "SHORTCUT_SOCKETS";
    pub const SHORTCUT_BYPASS: &str = "SHORTCUT_BYPASS";
    pub const SHORTCUT_BYTES: &str = "SHORTCUT_BYTES";
    pub const SPLICED_BYTES: &str = "SPLICED_BYTES";
    pub const SPLICE_ROUTES: &str = "SPLICE_ROUTES";
    pub const SETTINGS: &str = "SETTINGS";
    /// Socket cookie → when a reported socket was established (`bpf_ktime_get_ns`).
    pub const TCP_STARTS: &str = "TCP_STARTS";
    /// The ring buffer of `TcpEvent`s; its one reader is the proxy. Not in [`ALL`], like
    /// `AYA_LOGS`: it has no entries to show.
    pub const TCP_EVENTS: &str = "TCP_EVENTS";
    pub const STATS: &str = "STATS";
    /// aya-log's ring buffer (its name is aya-log's). Pinned like the others, so a restarted
    /// agent reads what the adopted programs log; not in [`ALL`]: it has no entries to show.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Every map, in the order `shuntctl status` lists them.
    pub const ALL: [&str; 15] = [
        MESHED_NETNS,
        OUTBOUND_EXCLUDED_PORTS,
        INBOUND_EXCLUDED_PORTS,
        INBOUND_LISTENERS,
        INBOUND_FAIL_CLOSED,
        ORIG_DST_BY_COOKIE,
        ORIG_DST_BY_CLIENT,
        SHORTCUT_SOCKETS,
        SHORTCUT_BYPASS,
        SHORTCUT_BYTES,
        SPLICED_BYTES,
        SPLICE_ROUTES,
        TCP_STARTS,
        SETTINGS,
        STATS,
    ];
}

/// Program names (the Rust function names in `ebpf/programs`).
pub mod program_names {
    pub const CONNECT4: &str = "shunt_connect4";
    /// IPv4-mapped IPv6 destinations of dual-stack sockets; native IPv6 is left untouched.
    pub const CONNECT6: &str = "shunt_connect6";
    pub const SOCKOPS: &str = "shunt_sockops";
    pub const GETSOCKOPT: &str = "shunt_getsockopt";
    pub const SK_LOOKUP: &str = "shunt_sk_lookup";
    pub const SK_MSG: &str = "shunt_sk_msg";
}

/// Value of `MESHED_NETNS`, keyed by netns cookie: this netns belongs to a captured pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshedNetns {
    /// The pod's IPv4 address, network byte order. Connections to it from inside the pod are
    /// loopback traffic and are never captured.
    pub pod_ip4_be: u32,
    /// `MESHED_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<MeshedNetns>() == 8);

/// `MeshedNetns::flags`: capture this pod's outbound connections.
pub const MESHED_CAPTURE_OUTBOUND: u32 = 1 << 0;
/// `MeshedNetns::flags`: capture this pod's inbound connections.
pub const MESHED_CAPTURE_INBOUND: u32 = 1 << 1;

/// Key of `OUTBOUND_EXCLUDED_PORTS`: a destination port that one pod's outbound capture skips.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetnsPortKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NetnsPortKey>() == 16);

/// Key of `INBOUND_EXCLUDED_PORTS`: a local port of one pod that inbound capture skips.
/// Keyed by pod IP because `sk_lookup` programs cannot read the netns cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodPortKey {
    pub pod_ip4_be: u32,
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PodPortKey>() == 8);

/// An original destination, as recovered through `SO_ORIGINAL_DST`. IPv4 uses `addr[0]`; the
/// other words are there so IPv6 (`cgroup/connect6`) fits without an ABI change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network byte order.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 20);

/// Key of `ORIG_DST_BY_CLIENT`: the app's side of a captured connection (its address as the
/// proxy's accepted socket sees the peer) in one netns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub netns_cookie: u64,
    /// Network byte order; IPv4 uses `addr[0]` and leaves the rest zero.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ClientKey>() == 32);

/// Key of `SHORTCUT_SOCKETS` (a sockhash): one end of a same-netns loopback hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns_cookie: u64,
    pub local_ip4_be: u32,
    pub remote_ip4_be: u32,
    /// Host byte order.
    pub local_port: u32,
    /// Host byte order.
    pub remote_port: u32,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 24);

impl SockKey {
    /// The key of a socket in the netns `netns_cookie`, from its local and remote addresses.
    #[must_use]
    pub fn from_addrs(
        netns_cookie: u64,
        local: core::net::SocketAddrV4,
        remote: core::net::SocketAddrV4,
    ) -> Self {
        Self {
            netns_cookie,
            local_ip4_be: u32::from_ne_bytes(local.ip().octets()),
            remote_ip4_be: u32::from_ne_bytes(remote.ip().octets()),
            local_port: u32::from(local.port()),
            remote_port: u32::from(remote.port()),
        }
    }

    /// The key of the socket at the other end of this connection.
    #[must_use]
    pub const fn peer(&self) -> Self {
        Self {
            netns_cookie: self.netns_cookie,
            local_ip4_be: self.remote_ip4_be,
            remote_ip4_be: self.local_ip4_be,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Value of `SPLICE_ROUTES`, keyed by an app socket's `SockKey`: once the proxy has written
/// onward every byte this socket sent it, the socket's messages go straight to `to`.
/// Written only by the proxy (whole values), read by the `sk_msg` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceRoute {
    /// The app socket at the other side of the proxy.
    pub to: SockKey,
    /// Bytes of this socket's stream the proxy has written to `to`'s connection. While it
    /// trails the socket's `SHORTCUT_BYTES`, bytes are still inside the proxy, and messages
    /// keep going through it so that none overtakes them.
    pub forwarded: u64,
}
const _: () = assert!(core::mem::size_of::<SpliceRoute>() == 32);

/// The single element of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `SETTING_*` bits.
    pub flags: u32,
    /// The most verbose `LOG_*` level the programs report through aya-log (`shunt-agent
    /// --bpf-log`); `LOG_OFF` by default. Read at run time, so adopted programs follow a
    /// restarted agent's level.
    pub log_level: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 8);

/// Which side of a flow a reported socket is (`TcpEvent::kind`).
pub const TCP_SOCKET_UPSTREAM: u32 = 1;
/// An inbound connection the proxy accepted from another pod or node.
pub const TCP_SOCKET_ACCEPTED: u32 = 2;

/// One closed TCP connection, as `sock_ops` reads it from the socket at `TCP_CLOSE` and sends
/// it through the `TCP_EVENTS` ring buffer. Only sockets that carry a flow across the network
/// are reported (the proxy's upstream dials and the connections it accepts from other pods),
/// never the app↔proxy loopback hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// `SO_COOKIE` of the socket: what the proxy matches its connections by.
    pub socket_cookie: u64,
    pub netns_cookie: u64,
    /// From `ESTABLISHED` to `TCP_CLOSE`, nanoseconds.
    pub duration_ns: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// The smoothed RTT in microseconds (the kernel's `srtt_us >> 3`).
    pub srtt_us: u32,
    pub total_retrans: u32,
    /// Segments presumed lost when the socket closed (`lost_out`).
    pub lost_out: u32,
    pub local_ip4_be: u32,
    pub remote_ip4_be: u32,
    pub local_port: u32,
    pub remote_port: u32,
    /// `TCP_SOCKET_*`.
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 72);

/// `TCP_STARTS` value: a watched socket, from its establishment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStart {
    /// `bpf_ktime_get_ns` at `ESTABLISHED`.
    pub started_ns: u64,
    /// `TCP_SOCKET_*`.
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TcpStart>() == 16);

/// Bytes of the `TCP_EVENTS` ring buffer (a power of two, as ring buffers need): about 3600
/// events waiting, far beyond what closes between two reads of the proxy.
pub const TCP_EVENTS_BYTES: u32 = 1 << 18;

/// `Settings::flags`: redirect app↔proxy loopback hops with sk_msg (the same-node shortcut).
pub const SETTING_SOCKMAP_SHORTCUT: u32 = 1 << 0;

/// `Settings::log_level`: nothing is logged.
pub const LOG_OFF: u32 = 0;
/// `Settings::log_level` values, aya-log's own (`aya_log_common::Level`), least verbose first.
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;
pub const LOG_TRACE: u32 = 5;

/// Indices into the per-CPU `STATS` array of `u64` counters.
pub mod stats {
    pub const OUTBOUND_CAPTURED: u32 = 0;
    pub const OUTBOUND_EXCLUDED: u32 = 1;
    pub const DIRECT_PROXY_CONNECT_REFUSED: u32 = 2;
    pub const INBOUND_STEERED: u32 = 3;
    pub const INBOUND_STEER_FAILED: u32 = 4;
    pub const ORIG_DST_ANSWERED: u32 = 5;
    pub const ORIG_DST_MISSED: u32 = 6;
    pub const SHORTCUT_SOCKETS_ADDED: u32 = 7;
    pub const SHORTCUT_REDIRECTS: u32 = 8;
    /// A shortcut socket's first message found no peer; it stays on the TCP stack.
    pub const SHORTCUT_FALLBACKS: u32 = 9;
    /// A message went straight to the app at the far side of the proxy (`SPLICE_ROUTES`).
    pub const SPLICE_REDIRECTS: u32 = 10;
    /// A splice route's far app socket was gone; the message went through the proxy.
    pub const SPLICE_MISSES: u32 = 11;
    /// An inbound connection to a fail-closed pod (STRICT mTLS) found no proxy listener and
    /// was dropped instead of reaching the app without policy.
    pub const INBOUND_FAIL_CLOSED_DROPS: u32 = 12;
    /// A closed connection's `TcpEvent` went into `TCP_EVENTS`.
    pub const TCP_EVENTS_SENT: u32 = 13;
    /// `TCP_EVENTS` was full (the proxy is not reading it): the event was lost.
    pub const TCP_EVENTS_DROPPED: u32 = 14;
    /// `TCP_STARTS` refused a socket: it is not reported when it closes.
    pub const TCP_WATCH_FAILED: u32 = 15;
    pub const COUNT: u32 = 16;

    /// Names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "outbound_captured",
        "outbound_excluded",
        "direct_proxy_connect_refused",
        "inbound_steered",
        "inbound_steer_failed",
        "orig_dst_answered",
        "orig_dst_missed",
        "shortcut_sockets_added",
        "shortcut_redirects",
        "shortcut_fallbacks",
        "splice_redirects",
        "splice_misses",
        "inbound_fail_closed_drops",
        "tcp_events_sent",
        "tcp_events_dropped",
        "tcp_watch_failed",
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (for every impl below): `#[repr(C)]`, only integer fields, no implicit padding
    // (the size assertions above prove it), so every bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::MeshedNetns {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::NetnsPortKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::PodPortKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::OrigDst {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ClientKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::SockKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::SpliceRoute {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Settings {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::TcpEvent {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::TcpStart {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_key_peer_swaps_ends_and_is_an_involution() {
        let key = SockKey {
            netns_cookie: 7,
            local_ip4_be: 1,
            remote_ip4_be: 2,
            local_port: 40000,
            remote_port: u32::from(OUTBOUND_PORT),
        };
        let peer = key.peer();
        assert_eq!(peer.local_port, u32::from(OUTBOUND_PORT));
        assert_eq!(peer.remote_ip4_be, 1);
        assert_eq!(peer.peer(), key);
    }

    #[test]
    fn sock_key_from_addrs_stores_addresses_as_the_kernel_does() {
        let app = core::net::SocketAddrV4::new(core::net::Ipv4Addr::new(10, 1, 2, 3), 40000);
        let proxy = core::net::SocketAddrV4::new(core::net::Ipv4Addr::LOCALHOST, OUTBOUND_PORT);
        let key = SockKey::from_addrs(9, app, proxy);
        // The kernel hands programs network-order bytes in a u32, so the first octet is the
        // lowest-addressed byte; ports are host order.
        assert_eq!(key.local_ip4_be.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(key.remote_ip4_be.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((key.local_port, key.remote_port), (40000, 15001));
        assert_eq!(key.netns_cookie, 9);
        assert_eq!(key.peer(), SockKey::from_addrs(9, proxy, app));
    }

    #[test]
    fn stat_names_cover_every_counter() {
        assert_eq!(stats::NAMES.len(), stats::COUNT as usize);
    }
}
