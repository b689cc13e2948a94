//! Every map of shunt's programs. Names, key and value types come from `shunt-common`; the agent
//! pins each one under `<bpffs>/shunt/<instance>/maps/<NAME>` and reuses it across restarts.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use shunt_common::{
    ClientKey, MeshedNetns, NetnsPortKey, OrigDst, PodPortKey, Settings, SockKey, SpliceRoute,
    TCP_EVENTS_BYTES, TcpStart, stats,
};

/// Captured pods per node: a few thousand is far beyond any node's pod limit.
const PODS: u32 = 4096;
/// Excluded ports, summed over every pod of the node.
const EXCLUDED_PORTS: u32 = 4096;
/// Connections in flight at once (original destinations, shortcut sockets).
const CONNECTIONS: u32 = 65536;
/// `BPF_F_NO_PREALLOC`, as map flags take it.
const BPF_F_NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// Netns cookie → the captured pod living in that netns.
#[map]
pub static MESHED_NETNS: HashMap<u64, MeshedNetns> = HashMap::with_max_entries(PODS, 0);

/// (netns cookie, destination port) → 1: outbound connections to that port are not captured.
#[map]
pub static OUTBOUND_EXCLUDED_PORTS: HashMap<NetnsPortKey, u8> =
    HashMap::with_max_entries(EXCLUDED_PORTS, 0);

/// (pod IP, local port) → 1: inbound connections to that port are not captured.
#[map]
pub static INBOUND_EXCLUDED_PORTS: HashMap<PodPortKey, u8> =
    HashMap::with_max_entries(EXCLUDED_PORTS, 0);

/// Pod IP (network order) → 1: the pod's inbound connections fail closed. When the proxy's
/// listener for it is missing (the proxy died or is restarting), `sk_lookup` drops them instead
/// of letting them reach the app without policy (PeerAuthentication STRICT).
#[map]
pub static INBOUND_FAIL_CLOSED: HashMap<u32, u8> = HashMap::with_max_entries(PODS, 0);

/// Pod IP (network order) → the proxy's inbound listener (127.0.0.1:15006) in that pod's netns.
#[map]
pub static INBOUND_LISTENERS: SockHash<u32> = SockHash::with_max_entries(PODS, 0);

/// Socket cookie of a captured app socket → its original destination, from `connect()` until
/// the socket is established. LRU: a connect that never completes leaves an entry behind.
#[map]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(CONNECTIONS, 0);

/// (netns cookie, app's local address) → original destination; answers `SO_ORIGINAL_DST`, as
/// often as the proxy asks. Removed when the proxy's accepted socket closes (`sock_ops` state
/// callback, see `sockops::on_state_change`), whether or not the proxy asked; LRU only as a
/// backstop for connections that never reached the proxy as a socket.
#[map]
pub static ORIG_DST_BY_CLIENT: LruHashMap<ClientKey, OrigDst> =
    LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Both ends of each same-netns app↔proxy hop, for the `sk_msg` shortcut.
#[map]
pub static SHORTCUT_SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(CONNECTIONS, 0);

/// Sockets whose first message found no peer in `SHORTCUT_SOCKETS`: they keep using the TCP
/// stack for their whole life, because mixing the two paths could reorder bytes at the peer.
#[map]
pub static SHORTCUT_BYPASS: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Shortcut socket → bytes its messages took to the other end of its own connection; the
/// proxy compares them with what it forwarded before it splices. Removed when the socket
/// closes (`sock_ops` state callback). LRU, so that an entry lost for any reason only costs
/// the splice, never a failed insert.
#[map]
pub static SHORTCUT_BYTES: LruHashMap<SockKey, u64> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// App socket → bytes its messages took straight to the far app (`SPLICE_ROUTES`). Kept past
/// the socket's close: the proxy reads it for the connection's telemetry, then removes it.
#[map]
pub static SPLICED_BYTES: LruHashMap<SockKey, u64> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// App socket → the app socket at the other side of the proxy, written by the proxy once it
/// has forwarded everything the socket sent. Not preallocated: the proxy replaces values while
/// programs read them, and only a freshly allocated element per update (freed after an RCU
/// grace period) guarantees a program never reads a half-written one.
#[map]
pub static SPLICE_ROUTES: HashMap<SockKey, SpliceRoute> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// Socket cookie → `bpf_ktime_get_ns` when a socket the TCP telemetry reports on was
/// established; its state callback at `TCP_CLOSE` takes the entry and sends a `TcpEvent`.
/// LRU: a socket whose close is never seen (the programs were replaced meanwhile) must not
/// fill the map for good.
#[map]
pub static TCP_STARTS: LruHashMap<u64, TcpStart> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Closed connections' `TcpEvent`s, for the proxy. A full ring drops the event (and the
/// connection's kernel figures), never the connection.
#[map]
pub static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_BYTES, 0);

/// Index 0: the agent's `Settings`.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `shunt_common::stats`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);
