//! Typed access to the pinned maps, and their decoding into readable JSON.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, SockHash};
use aya::{Ebpf, Pod};
use serde_json::{Value, json};
use shunt_common::{
    AF_INET, AF_INET6, ClientKey, LOG_OFF, MESHED_CAPTURE_INBOUND, MESHED_CAPTURE_OUTBOUND,
    MeshedNetns, NetnsPortKey, OrigDst, PodPortKey, SETTING_SOCKMAP_SHORTCUT, Settings, SockKey,
    SpliceRoute, TcpStart, map_names, stats,
};

use super::Error;

/// `BPF_ANY`: create or replace.
const ANY: u64 = 0;

/// An IPv4 address as the programs store it: network byte order in a `u32`.
pub fn ip4_be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

pub fn ip4_from_be(ip4_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(ip4_be))
}

fn socket(ip4_be: u32, port: impl TryInto<u16>) -> String {
    match port.try_into() {
        Ok(port) => SocketAddrV4::new(ip4_from_be(ip4_be), port).to_string(),
        Err(_) => format!("{}:<bad port>", ip4_from_be(ip4_be)),
    }
}

fn orig_dst(dst: &OrigDst) -> String {
    match dst.family {
        AF_INET => socket(dst.addr[0], dst.port),
        AF_INET6 => {
            let bytes: Vec<u8> = dst
                .addr
                .iter()
                .flat_map(|word| word.to_ne_bytes())
                .collect();
            let ip = <[u8; 16]>::try_from(bytes).map_or_else(
                |_| "<bad address>".to_owned(),
                |b| std::net::Ipv6Addr::from(b).to_string(),
            );
            format!("[{ip}]:{}", dst.port)
        }
        family => format!("<family {family}>"),
    }
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map, Error> {
    ebpf.map(name).ok_or(Error::MissingMap { map: name })
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, Error> {
    ebpf.map_mut(name).ok_or(Error::MissingMap { map: name })
}

fn map_error(map: &'static str, action: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        map,
        action,
        error: Box::new(source),
    }
}

fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn hash<'a, K: Pod, V: Pod>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a MapData, K, V>, Error> {
    HashMap::try_from(map(ebpf, name)?).map_err(map_error(name, "opening"))
}

fn hash_mut<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, Error> {
    HashMap::try_from(map_mut(ebpf, name)?).map_err(map_error(name, "opening"))
}

fn max_entries(ebpf: &Ebpf, name: &'static str) -> Result<u32, Error> {
    let data = match map(ebpf, name)? {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::SockHash(d)
        | Map::Array(d)
        | Map::PerCpuArray(d) => d,
        other => {
            return Err(Error::UnexpectedMapType {
                map: name,
                found: format!("{other:?}"),
            });
        }
    };
    data.info()
        .map(|info| info.max_entries())
        .map_err(map_error(name, "reading the info of"))
}

/// How many keys a walk may visit: a map that changes while it is walked can make the kernel
/// restart the walk, so an unbounded walk might not end.
fn walk_limit(ebpf: &Ebpf, name: &'static str) -> Result<usize, Error> {
    Ok(usize::try_from(max_entries(ebpf, name)?)
        .unwrap_or(usize::MAX)
        .saturating_mul(2))
}

fn hash_keys<K: Pod, V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<K>, Error> {
    let limit = walk_limit(ebpf, name)?;
    hash::<K, V>(ebpf, name)?
        .keys()
        .take(limit)
        .collect::<Result<_, _>>()
        .map_err(map_error(name, "listing the keys of"))
}

fn sockhash_keys<K: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<K>, Error> {
    let limit = walk_limit(ebpf, name)?;
    let sockets: SockHash<&MapData, K> =
        SockHash::try_from(map(ebpf, name)?).map_err(map_error(name, "opening"))?;
    sockets
        .keys()
        .take(limit)
        .collect::<Result<_, _>>()
        .map_err(map_error(name, "listing the keys of"))
}

fn hash_entries<K: Pod, V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<(K, V)>, Error> {
    let entries = hash::<K, V>(ebpf, name)?;
    let mut out = Vec::new();
    for key in hash_keys::<K, V>(ebpf, name)? {
        match entries.get(&key, 0) {
            Ok(value) => out.push((key, value)),
            // Gone since the keys were listed: it simply is not part of the dump.
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_error(name, "reading")(e)),
        }
    }
    Ok(out)
}

fn remove<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &'static str, key: &K) -> Result<(), Error> {
    match hash_mut::<K, V>(ebpf, name)?.remove(key) {
        Err(e) if !is_not_found(&e) => Err(map_error(name, "removing an entry from")(e)),
        _ => Ok(()),
    }
}

/// Removes every entry whose key matches `doomed`; returns how many went.
fn remove_where<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    doomed: impl Fn(&K) -> bool,
) -> Result<usize, Error> {
    let keys: Vec<K> = hash_keys::<K, V>(ebpf, name)?
        .into_iter()
        .filter(|k| doomed(k))
        .collect();
    for key in &keys {
        remove::<K, V>(ebpf, name, key)?;
    }
    Ok(keys.len())
}

// ---------------------------------------------------------------------------------------------
// Pod entries

pub fn meshed(ebpf: &Ebpf, netns_cookie: u64) -> Result<Option<MeshedNetns>, Error> {
    match hash::<u64, MeshedNetns>(ebpf, map_names::MESHED_NETNS)?.get(&netns_cookie, 0) {
        Ok(pod) => Ok(Some(pod)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map_error(map_names::MESHED_NETNS, "reading")(e)),
    }
}

pub fn meshed_cookies(ebpf: &Ebpf) -> Result<Vec<u64>, Error> {
    hash_keys::<u64, MeshedNetns>(ebpf, map_names::MESHED_NETNS)
}

pub fn set_meshed(ebpf: &mut Ebpf, netns_cookie: u64, pod_ip: Ipv4Addr) -> Result<(), Error> {
    let value = MeshedNetns {
        pod_ip4_be: ip4_be(pod_ip),
        flags: MESHED_CAPTURE_OUTBOUND | MESHED_CAPTURE_INBOUND,
    };
    hash_mut::<u64, MeshedNetns>(ebpf, map_names::MESHED_NETNS)?
        .insert(&netns_cookie, &value, ANY)
        .map_err(map_error(map_names::MESHED_NETNS, "adding the pod to"))
}

pub fn remove_meshed(ebpf: &mut Ebpf, netns_cookie: u64) -> Result<(), Error> {
    remove::<u64, MeshedNetns>(ebpf, map_names::MESHED_NETNS, &netns_cookie)
}

/// Makes the netns' excluded outbound ports exactly `ports`: new ones are added before stale
/// ones are removed, so a port that stays excluded never has a gap.
pub fn set_outbound_excluded(
    ebpf: &mut Ebpf,
    netns_cookie: u64,
    ports: &BTreeSet<u16>,
) -> Result<(), Error> {
    const NAME: &str = map_names::OUTBOUND_EXCLUDED_PORTS;
    let key = |port| NetnsPortKey {
        netns_cookie,
        port,
        _pad: [0; 6],
    };
    {
        let mut map = hash_mut::<NetnsPortKey, u8>(ebpf, NAME)?;
        for &port in ports {
            map.insert(&key(port), &1, ANY)
                .map_err(map_error(NAME, "adding an excluded port to"))?;
        }
    }
    remove_where::<NetnsPortKey, u8>(ebpf, NAME, |k| {
        k.netns_cookie == netns_cookie && !ports.contains(&k.port)
    })?;
    Ok(())
}

/// Makes the pod IP's excluded inbound ports exactly `ports` (see `set_outbound_excluded`).
pub fn set_inbound_excluded(
    ebpf: &mut Ebpf,
    pod_ip: Ipv4Addr,
    ports: &BTreeSet<u16>,
) -> Result<(), Error> {
    const NAME: &str = map_names::INBOUND_EXCLUDED_PORTS;
    let pod_ip4_be = ip4_be(pod_ip);
    let key = |port| PodPortKey {
        pod_ip4_be,
        port,
        _pad: [0; 2],
    };
    {
        let mut map = hash_mut::<PodPortKey, u8>(ebpf, NAME)?;
        for &port in ports {
            map.insert(&key(port), &1, ANY)
                .map_err(map_error(NAME, "adding an excluded port to"))?;
        }
    }
    remove_where::<PodPortKey, u8>(ebpf, NAME, |k| {
        k.pod_ip4_be == pod_ip4_be && !ports.contains(&k.port)
    })?;
    Ok(())
}

pub fn set_inbound_listener(
    ebpf: &mut Ebpf,
    pod_ip: Ipv4Addr,
    listener: BorrowedFd<'_>,
) -> Result<(), Error> {
    const NAME: &str = map_names::INBOUND_LISTENERS;
    let mut sockets: SockHash<&mut MapData, u32> =
        SockHash::try_from(map_mut(ebpf, NAME)?).map_err(map_error(NAME, "opening"))?;
    sockets
        .insert(&ip4_be(pod_ip), listener.as_raw_fd(), ANY)
        .map_err(|source| Error::InboundListener {
            pod_ip,
            error: Box::new(source),
        })
}

/// Whether `pod_ip`'s inbound connections are dropped, not passed to the app, while the
/// proxy's listener for it is missing.
pub fn set_inbound_fail_closed(ebpf: &mut Ebpf, pod_ip: Ipv4Addr, on: bool) -> Result<(), Error> {
    const NAME: &str = map_names::INBOUND_FAIL_CLOSED;
    let mut map = hash_mut::<u32, u8>(ebpf, NAME)?;
    if on {
        map.insert(&ip4_be(pod_ip), &1, ANY)
            .map_err(map_error(NAME, "adding a pod to"))
    } else {
        match map.remove(&ip4_be(pod_ip)) {
            Err(e) if !is_not_found(&e) => Err(map_error(NAME, "removing a pod from")(e)),
            _ => Ok(()),
        }
    }
}

pub fn remove_inbound_listener(ebpf: &mut Ebpf, pod_ip: Ipv4Addr) -> Result<(), Error> {
    const NAME: &str = map_names::INBOUND_LISTENERS;
    let mut sockets: SockHash<&mut MapData, u32> =
        SockHash::try_from(map_mut(ebpf, NAME)?).map_err(map_error(NAME, "opening"))?;
    match sockets.remove(&ip4_be(pod_ip)) {
        Err(e) if !is_not_found(&e) => Err(map_error(NAME, "removing an entry from")(e)),
        _ => Ok(()),
    }
}

/// Everything keyed by this netns or pod IP, except the shortcut's sockets and fallbacks:
/// those belong to live connections and leave with them.
pub fn remove_pod_entries(
    ebpf: &mut Ebpf,
    netns_cookie: u64,
    pod_ip: Option<Ipv4Addr>,
) -> Result<(), Error> {
    remove_meshed(ebpf, netns_cookie)?;
    if let Some(pod_ip) = pod_ip {
        remove_inbound_listener(ebpf, pod_ip)?;
        set_inbound_fail_closed(ebpf, pod_ip, false)?;
        let pod_ip4_be = ip4_be(pod_ip);
        remove_where::<PodPortKey, u8>(ebpf, map_names::INBOUND_EXCLUDED_PORTS, |k| {
            k.pod_ip4_be == pod_ip4_be
        })?;
    }
    remove_where::<NetnsPortKey, u8>(ebpf, map_names::OUTBOUND_EXCLUDED_PORTS, |k| {
        k.netns_cookie == netns_cookie
    })?;
    remove_where::<ClientKey, OrigDst>(ebpf, map_names::ORIG_DST_BY_CLIENT, |k| {
        k.netns_cookie == netns_cookie
    })?;
    Ok(())
}

pub fn set_settings(ebpf: &mut Ebpf, sockmap_shortcut: bool) -> Result<(), Error> {
    const NAME: &str = map_names::SETTINGS;
    let mut settings: Array<&mut MapData, Settings> =
        Array::try_from(map_mut(ebpf, NAME)?).map_err(map_error(NAME, "opening"))?;
    let flags = if sockmap_shortcut {
        SETTING_SOCKMAP_SHORTCUT
    } else {
        0
    };
    settings
        .set(
            0,
            &Settings {
                flags,
                // `EbpfCapture::start_bpf_log` raises it for `--bpf-log`.
                log_level: LOG_OFF,
            },
            0,
        )
        .map_err(map_error(NAME, "writing"))
}

/// Every counter, summed over CPUs, by name.
pub fn counters(ebpf: &Ebpf) -> Result<Vec<(&'static str, u64)>, Error> {
    const NAME: &str = map_names::STATS;
    let per_cpu: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, NAME)?).map_err(map_error(NAME, "opening"))?;
    stats::NAMES
        .iter()
        .zip(0u32..)
        .map(|(&name, index)| {
            let values = per_cpu.get(&index, 0).map_err(map_error(NAME, "reading"))?;
            Ok((
                name,
                values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)),
            ))
        })
        .collect()
}

/// Duplicates of the descriptors of `SHORTCUT_BYTES`, `SPLICED_BYTES` and `SPLICE_ROUTES`, in
/// that order.
pub fn splice_map_fds(ebpf: &Ebpf) -> Result<Vec<OwnedFd>, Error> {
    let duplicate = |name: &'static str, data: &MapData| {
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| map_error(name, "duplicating the descriptor of")(MapError::from(e)))
    };
    let to_peer = hash::<SockKey, u64>(ebpf, map_names::SHORTCUT_BYTES)?;
    let spliced = hash::<SockKey, u64>(ebpf, map_names::SPLICED_BYTES)?;
    let routes = hash::<SockKey, SpliceRoute>(ebpf, map_names::SPLICE_ROUTES)?;
    Ok(vec![
        duplicate(map_names::SHORTCUT_BYTES, to_peer.map())?,
        duplicate(map_names::SPLICED_BYTES, spliced.map())?,
        duplicate(map_names::SPLICE_ROUTES, routes.map())?,
    ])
}

/// A descriptor of `TCP_EVENTS`, the ring buffer of closed connections' TCP figures, for the
/// proxy to read.
pub fn tcp_events_fd(ebpf: &Ebpf) -> Result<OwnedFd, Error> {
    let name = map_names::TCP_EVENTS;
    let ring: aya::maps::RingBuf<&MapData> =
        aya::maps::RingBuf::try_from(map(ebpf, name)?).map_err(map_error(name, "opening"))?;
    ring.as_fd()
        .try_clone_to_owned()
        .map_err(|e| map_error(name, "duplicating the descriptor of")(MapError::from(e)))
}

// ---------------------------------------------------------------------------------------------
// Status and dumps

/// (entries in use, max_entries). Arrays always hold `max_entries` entries.
pub fn size(ebpf: &Ebpf, name: &'static str) -> Result<(usize, u32), Error> {
    let max = max_entries(ebpf, name)?;
    let entries = match name {
        map_names::MESHED_NETNS => hash_keys::<u64, MeshedNetns>(ebpf, name)?.len(),
        map_names::OUTBOUND_EXCLUDED_PORTS => hash_keys::<NetnsPortKey, u8>(ebpf, name)?.len(),
        map_names::INBOUND_EXCLUDED_PORTS => hash_keys::<PodPortKey, u8>(ebpf, name)?.len(),
        map_names::INBOUND_LISTENERS => sockhash_keys::<u32>(ebpf, name)?.len(),
        map_names::INBOUND_FAIL_CLOSED => hash_keys::<u32, u8>(ebpf, name)?.len(),
        map_names::ORIG_DST_BY_COOKIE => hash_keys::<u64, OrigDst>(ebpf, name)?.len(),
        map_names::ORIG_DST_BY_CLIENT => hash_keys::<ClientKey, OrigDst>(ebpf, name)?.len(),
        map_names::SHORTCUT_SOCKETS => sockhash_keys::<SockKey>(ebpf, name)?.len(),
        map_names::SHORTCUT_BYPASS => hash_keys::<SockKey, u8>(ebpf, name)?.len(),
        map_names::SHORTCUT_BYTES | map_names::SPLICED_BYTES => {
            hash_keys::<SockKey, u64>(ebpf, name)?.len()
        }
        map_names::SPLICE_ROUTES => hash_keys::<SockKey, SpliceRoute>(ebpf, name)?.len(),
        map_names::TCP_STARTS => hash_keys::<u64, TcpStart>(ebpf, name)?.len(),
        _ => usize::try_from(max).unwrap_or(usize::MAX),
    };
    Ok((entries, max))
}

fn sock_key(key: &SockKey) -> Value {
    json!({
        "netns_cookie": key.netns_cookie,
        "local": socket(key.local_ip4_be, key.local_port),
        "remote": socket(key.remote_ip4_be, key.remote_port),
    })
}

fn entry(key: Value, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

/// The map's entries as `[{"key": …, "value": …}]`, decoded by type.
pub fn dump(ebpf: &Ebpf, name: &str) -> Result<Value, Error> {
    let entries: Vec<Value> = match name {
        map_names::MESHED_NETNS => hash_entries::<u64, MeshedNetns>(ebpf, map_names::MESHED_NETNS)?
            .iter()
            .map(|(cookie, pod)| {
                entry(
                    json!({ "netns_cookie": cookie }),
                    json!({
                        "pod_ip": ip4_from_be(pod.pod_ip4_be).to_string(),
                        "capture_outbound": pod.flags & MESHED_CAPTURE_OUTBOUND != 0,
                        "capture_inbound": pod.flags & MESHED_CAPTURE_INBOUND != 0,
                    }),
                )
            })
            .collect(),
        map_names::OUTBOUND_EXCLUDED_PORTS => {
            hash_entries::<NetnsPortKey, u8>(ebpf, map_names::OUTBOUND_EXCLUDED_PORTS)?
                .iter()
                .map(|(k, v)| {
                    entry(
                        json!({ "netns_cookie": k.netns_cookie, "port": k.port }),
                        json!(v),
                    )
                })
                .collect()
        }
        map_names::INBOUND_EXCLUDED_PORTS => {
            hash_entries::<PodPortKey, u8>(ebpf, map_names::INBOUND_EXCLUDED_PORTS)?
                .iter()
                .map(|(k, v)| {
                    entry(
                        json!({ "pod_ip": ip4_from_be(k.pod_ip4_be).to_string(), "port": k.port }),
                        json!(v),
                    )
                })
                .collect()
        }
        // A sockhash's values are sockets, which user space cannot read back.
        map_names::INBOUND_LISTENERS => sockhash_keys::<u32>(ebpf, map_names::INBOUND_LISTENERS)?
            .iter()
            .map(|ip| {
                entry(
                    json!({ "pod_ip": ip4_from_be(*ip).to_string() }),
                    json!("listener socket"),
                )
            })
            .collect(),
        map_names::INBOUND_FAIL_CLOSED => {
            hash_entries::<u32, u8>(ebpf, map_names::INBOUND_FAIL_CLOSED)?
                .iter()
                .map(|(ip, v)| entry(json!({ "pod_ip": ip4_from_be(*ip).to_string() }), json!(v)))
                .collect()
        }
        map_names::ORIG_DST_BY_COOKIE => {
            hash_entries::<u64, OrigDst>(ebpf, map_names::ORIG_DST_BY_COOKIE)?
                .iter()
                .map(|(cookie, dst)| {
                    entry(
                        json!({ "socket_cookie": cookie }),
                        json!({ "orig_dst": orig_dst(dst) }),
                    )
                })
                .collect()
        }
        map_names::ORIG_DST_BY_CLIENT => {
            hash_entries::<ClientKey, OrigDst>(ebpf, map_names::ORIG_DST_BY_CLIENT)?
                .iter()
                .map(|(k, dst)| {
                    let client = OrigDst {
                        addr: k.addr,
                        port: k.port,
                        family: k.family,
                    };
                    entry(
                        json!({ "netns_cookie": k.netns_cookie, "client": orig_dst(&client) }),
                        json!({ "orig_dst": orig_dst(dst) }),
                    )
                })
                .collect()
        }
        map_names::SHORTCUT_SOCKETS => sockhash_keys::<SockKey>(ebpf, map_names::SHORTCUT_SOCKETS)?
            .iter()
            .map(|k| entry(sock_key(k), json!("socket")))
            .collect(),
        map_names::SHORTCUT_BYPASS => {
            hash_entries::<SockKey, u8>(ebpf, map_names::SHORTCUT_BYPASS)?
                .iter()
                .map(|(k, v)| entry(sock_key(k), json!(v)))
                .collect()
        }
        map_names::SHORTCUT_BYTES => hash_entries::<SockKey, u64>(ebpf, map_names::SHORTCUT_BYTES)?
            .iter()
            .map(|(k, v)| entry(sock_key(k), json!({ "to_peer": v })))
            .collect(),
        map_names::SPLICED_BYTES => hash_entries::<SockKey, u64>(ebpf, map_names::SPLICED_BYTES)?
            .iter()
            .map(|(k, v)| entry(sock_key(k), json!({ "spliced": v })))
            .collect(),
        map_names::SPLICE_ROUTES => {
            hash_entries::<SockKey, SpliceRoute>(ebpf, map_names::SPLICE_ROUTES)?
                .iter()
                .map(|(k, v)| {
                    entry(
                        sock_key(k),
                        json!({ "to": sock_key(&v.to), "forwarded": v.forwarded }),
                    )
                })
                .collect()
        }
        map_names::TCP_STARTS => hash_entries::<u64, TcpStart>(ebpf, map_names::TCP_STARTS)?
            .iter()
            .map(|(cookie, start)| {
                entry(
                    json!({ "socket_cookie": cookie }),
                    json!({ "started_ns": start.started_ns, "kind": start.kind }),
                )
            })
            .collect(),
        map_names::SETTINGS => {
            let settings: Array<&MapData, Settings> =
                Array::try_from(map(ebpf, map_names::SETTINGS)?)
                    .map_err(map_error(map_names::SETTINGS, "opening"))?;
            let value = settings
                .get(&0, 0)
                .map_err(map_error(map_names::SETTINGS, "reading"))?;
            vec![entry(
                json!(0),
                json!({
                    "flags": value.flags,
                    "sockmap_shortcut": value.flags & SETTING_SOCKMAP_SHORTCUT != 0,
                }),
            )]
        }
        map_names::STATS => counters(ebpf)?
            .into_iter()
            .map(|(counter, total)| entry(json!(counter), json!(total)))
            .collect(),
        other => {
            return Err(Error::UnknownMap {
                name: other.to_owned(),
            });
        }
    };
    Ok(Value::Array(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_network_order() {
        let cases = [
            (
                Ipv4Addr::new(127, 0, 0, 1),
                u32::from_ne_bytes([127, 0, 0, 1]),
            ),
            (
                Ipv4Addr::new(10, 244, 0, 10),
                u32::from_ne_bytes([10, 244, 0, 10]),
            ),
            (Ipv4Addr::UNSPECIFIED, 0),
        ];
        for (ip, kernel_value) in cases {
            assert_eq!(ip4_be(ip), kernel_value, "{ip}");
            assert_eq!(ip4_from_be(kernel_value), ip);
        }
    }

    #[test]
    fn original_destinations_read_like_socket_addresses() {
        let v4 = OrigDst {
            addr: [ip4_be(Ipv4Addr::new(10, 0, 0, 7)), 0, 0, 0],
            port: 80,
            family: AF_INET,
        };
        let mut v6_words = [0u32; 4];
        for (word, chunk) in v6_words
            .iter_mut()
            .zip(std::net::Ipv6Addr::LOCALHOST.octets().chunks(4))
        {
            *word = u32::from_ne_bytes(chunk.try_into().unwrap());
        }
        let v6 = OrigDst {
            addr: v6_words,
            port: 443,
            family: AF_INET6,
        };
        let unknown = OrigDst { family: 99, ..v4 };
        let cases = [
            (v4, "10.0.0.7:80"),
            (v6, "[::1]:443"),
            (unknown, "<family 99>"),
        ];
        for (dst, expected) in cases {
            assert_eq!(orig_dst(&dst), expected);
        }
    }

    #[test]
    fn socket_strings_reject_impossible_ports() {
        assert_eq!(
            socket(ip4_be(Ipv4Addr::LOCALHOST), 15001u32),
            "127.0.0.1:15001"
        );
        assert_eq!(
            socket(ip4_be(Ipv4Addr::LOCALHOST), 70000u32),
            "127.0.0.1:<bad port>"
        );
    }
}
