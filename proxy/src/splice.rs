//! Splicing: an opaque TCP connection between two pods of this node stops passing through
//! the proxy once the proxy has nothing of it left in flight.
//!
//! With the sockmap shortcut on, each app socket's messages already skip the TCP stack: the
//! `sk_msg` program puts them in the receive queue of the proxy's socket at the other end of
//! the app's own connection, and counts their bytes (`SHORTCUT_BYTES`). For a connection the
//! proxy forwards at L4 and delivers on this node (the client's socket C, the proxy's accepted
//! socket C', the proxy's delivery socket S', the server's socket S), the proxy can hand the
//! stream over to the kernel one direction at a time: it writes a `SPLICE_ROUTES` entry
//! "C → S, `forwarded` bytes", and from then on each message of C whose count of bytes sent to
//! the proxy equals `forwarded` goes straight into S's receive queue. The same for S → C.
//!
//! Why that cannot reorder bytes:
//! - A message skips the proxy only when every byte C sent before it has been written onward
//!   by the proxy (`SHORTCUT_BYTES == forwarded`); the proxy raises `forwarded` only after its write
//!   returned, and its writes to S' land in S's receive queue before `write` returns, because...
//! - ...a direction is routed only when every byte the proxy wrote to S' went through the
//!   shortcut into S's receive queue (S' counted exactly what the proxy wrote), never through
//!   the TCP stack, where a spliced message could overtake them.
//! - FIN and RST still travel C → C' → proxy → S' → S, after every byte C sent before them.
//!
//! The proxy publishes when a direction has caught up (its reader has nothing more and
//! everything read was written: [`progress::Progress::caught_up`]), from the second time on, so
//! that a connection that exchanges one request and closes (CRR) costs no map updates. Bytes
//! that skipped the proxy (`SPLICED_BYTES`) are added to the connection's telemetry every
//! [`REPORT_INTERVAL`] while it lasts, and when it ends.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aya::maps::{HashMap, Map, MapData, MapError};
use shunt_common::{SockKey, SpliceRoute, map_names};
use tokio::net::TcpStream;

use crate::progress::{self, Direction};
use shunt_api::netns;

/// A direction is routed at its second catch-up, not its first: one-exchange connections
/// never pay for the map updates.
const ROUTE_AT_CATCH_UP: u32 = 2;

/// How often a spliced connection's bytes reach its counters while it lasts: Istio's default
/// TCP reporting interval (`tcp_reporting_duration`, 5 s).
pub const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the agent's SpliceMaps message carried {0} descriptors; expected 3 (SHORTCUT_BYTES, \
         SPLICED_BYTES, SPLICE_ROUTES): are the agent and the proxy from the same release?"
    )]
    Descriptors(usize),
    #[error(
        "cannot use the agent's {map} map: {source}; opaque TCP between pods of this node keeps \
         going through the proxy"
    )]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// The maps a connection is spliced with. A seam: tests use an in-memory table.
pub trait SpliceTable: Send + Sync {
    /// The bytes a shortcut socket's messages took to its own peer, if any were counted.
    fn to_peer(&self, socket: &SockKey) -> io::Result<Option<u64>>;
    /// The bytes an app socket's messages took straight to the far app.
    fn spliced(&self, app: &SockKey) -> io::Result<Option<u64>>;
    /// Routes `app`'s messages as `route` says.
    fn set_route(&self, app: &SockKey, route: &SpliceRoute) -> io::Result<()>;
    /// Forgets a socket: its route and its counts. Already gone is fine.
    fn forget(&self, socket: &SockKey);
}

/// The agent's pinned `SHORTCUT_BYTES`, `SPLICED_BYTES` and `SPLICE_ROUTES`, through
/// descriptors it sent. aya's map handles take `&mut self` to write; one lock covers them all,
/// and is never held for longer than a syscall.
pub struct AgentMaps {
    maps: Mutex<Maps>,
}

struct Maps {
    to_peer: HashMap<MapData, SockKey, u64>,
    spliced: HashMap<MapData, SockKey, u64>,
    routes: HashMap<MapData, SockKey, SpliceRoute>,
}

impl AgentMaps {
    /// From the `SpliceMaps` message's descriptors, in its order.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Self, Error> {
        let count = fds.len();
        let [to_peer, spliced, routes]: [OwnedFd; 3] =
            fds.try_into().map_err(|_| Error::Descriptors(count))?;
        Ok(Self {
            maps: Mutex::new(Maps {
                to_peer: open(map_names::SHORTCUT_BYTES, to_peer)?,
                spliced: open(map_names::SPLICED_BYTES, spliced)?,
                routes: open(map_names::SPLICE_ROUTES, routes)?,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open<V: aya::Pod>(
    map: &'static str,
    fd: OwnedFd,
) -> Result<HashMap<MapData, SockKey, V>, Error> {
    let error = |source| Error::Map { map, source };
    let data = MapData::from_fd(fd).map_err(error)?;
    let map_any = Map::from_map_data(data).map_err(error)?;
    HashMap::try_from(map_any).map_err(error)
}

fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn io_error(error: MapError) -> io::Error {
    match error {
        MapError::SyscallError(e) => e.io_error,
        other => io::Error::other(other),
    }
}

fn get(map: &HashMap<MapData, SockKey, u64>, key: &SockKey) -> io::Result<Option<u64>> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

impl SpliceTable for AgentMaps {
    fn to_peer(&self, socket: &SockKey) -> io::Result<Option<u64>> {
        get(&self.lock().to_peer, socket)
    }

    fn spliced(&self, app: &SockKey) -> io::Result<Option<u64>> {
        get(&self.lock().spliced, app)
    }

    fn set_route(&self, app: &SockKey, route: &SpliceRoute) -> io::Result<()> {
        self.lock().routes.insert(app, route, 0).map_err(io_error)
    }

    fn forget(&self, socket: &SockKey) {
        let mut maps = self.lock();
        for (map, removed) in [
            (map_names::SPLICE_ROUTES, maps.routes.remove(socket)),
            (map_names::SPLICED_BYTES, maps.spliced.remove(socket)),
            (map_names::SHORTCUT_BYTES, maps.to_peer.remove(socket)),
        ] {
            if let Err(e) = removed
                && !is_not_found(&e)
            {
                tracing::debug!(error = %e, map, "removing a closed connection's entry failed");
            }
        }
    }
}

/// The proxy's handle on splicing, shared by every connection; empty until the agent sends
/// the maps (eBPF capture with the shortcut on), and emptied when a session without them
/// begins.
#[derive(Default)]
pub struct Splicer {
    table: RwLock<Option<Arc<dyn SpliceTable>>>,
}

impl Splicer {
    pub fn set(&self, table: Option<Arc<dyn SpliceTable>>) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }

    #[must_use]
    pub fn is_on(&self) -> bool {
        self.table().is_some()
    }

    fn table(&self) -> Option<Arc<dyn SpliceTable>> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key of the client app's socket, as the programs see it, from the proxy's accepted
    /// socket; `None` while splicing is off or for anything but IPv4.
    #[must_use]
    pub fn client_app(&self, accepted: &TcpStream) -> Option<SockKey> {
        if !self.is_on() {
            return None;
        }
        app_key(accepted)
            .inspect_err(|error| tracing::debug!(%error, "no splice key for a connection"))
            .ok()
            .flatten()
    }

    /// The splice of one connection: `client_app` dialled, the proxy delivered it to the app
    /// behind `delivery` (the proxy's socket in the server pod's netns).
    #[must_use]
    pub fn pair(&self, client_app: SockKey, delivery: &TcpStream) -> Option<SplicePair> {
        let table = self.table()?;
        let server_app = app_key(delivery)
            .inspect_err(|error| tracing::debug!(%error, "no splice key for a delivery"))
            .ok()
            .flatten()?;
        Some(SplicePair::new(table, client_app, server_app))
    }
}

/// The key of the app socket at the other end of the proxy's `socket`.
fn app_key(socket: &TcpStream) -> io::Result<Option<SockKey>> {
    let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (socket.local_addr()?, socket.peer_addr()?)
    else {
        return Ok(None);
    };
    let cookie = netns::socket_netns_cookie(socket.as_fd())?;
    Ok(Some(SockKey::from_addrs(cookie, peer, local)))
}

/// One direction's splice state.
#[derive(Debug, Default)]
struct Way {
    catch_ups: u32,
    /// `forwarded` of the route last written (0: none yet).
    published: u64,
    /// Never to be routed: a write went around the shortcut, or the maps failed.
    off: bool,
    /// Spliced bytes already handed to telemetry by [`SplicePair::report`].
    reported: u64,
}

/// What skipped the proxy, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// The splice of one connection: the four sockets' keys, and each direction's state.
pub struct SplicePair {
    table: Arc<dyn SpliceTable>,
    client_app: SockKey,
    server_app: SockKey,
    ways: Mutex<[Way; 2]>,
}

impl SplicePair {
    #[must_use]
    pub fn new(table: Arc<dyn SpliceTable>, client_app: SockKey, server_app: SockKey) -> Self {
        Self {
            table,
            client_app,
            server_app,
            ways: Mutex::new([Way::default(), Way::default()]),
        }
    }

    /// (the app whose messages this direction carries, the proxy socket the proxy writes them
    /// to, the app they are for).
    fn ends(&self, direction: Direction) -> (SockKey, SockKey, SockKey) {
        match direction {
            Direction::ClientToServer => (self.client_app, self.server_app.peer(), self.server_app),
            Direction::ServerToClient => (self.server_app, self.client_app.peer(), self.client_app),
        }
    }

    /// `direction` has caught up: the proxy wrote `forwarded` bytes of it in all, and holds
    /// none. Routes it, or moves its route on.
    pub fn caught_up(&self, direction: Direction, forwarded: u64) {
        let mut ways = self.ways.lock().unwrap_or_else(PoisonError::into_inner);
        let way = &mut ways[index(direction)];
        if way.off || forwarded == way.published {
            return;
        }
        way.catch_ups += 1;
        if way.catch_ups < ROUTE_AT_CATCH_UP {
            return;
        }
        let (source, writer, target) = self.ends(direction);
        if way.published == 0 {
            // Every byte the proxy wrote must already be in the target's receive queue, or a
            // spliced message could overtake bytes still in the TCP stack.
            match self.table.to_peer(&writer) {
                Ok(Some(counted)) if counted == forwarded => {}
                Ok(counted) => {
                    tracing::debug!(
                        ?direction,
                        forwarded,
                        ?counted,
                        "not splicing: the proxy's writes did not all take the shortcut"
                    );
                    way.off = true;
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "not splicing: reading SHORTCUT_BYTES failed");
                    way.off = true;
                    return;
                }
            }
        }
        let route = SpliceRoute {
            to: target,
            forwarded,
        };
        match self.table.set_route(&source, &route) {
            Ok(()) => way.published = forwarded,
            Err(error) => {
                tracing::debug!(%error, "not splicing: writing SPLICE_ROUTES failed");
                way.off = true;
            }
        }
    }

    /// What skipped the proxy since the last report, so a long-lived spliced connection's
    /// byte counters move while it lasts, as the proxied bytes' do.
    pub fn report(&self) -> Spliced {
        let mut ways = self.ways.lock().unwrap_or_else(PoisonError::into_inner);
        let mut news = [0; 2];
        for (direction, source) in [
            (Direction::ClientToServer, self.client_app),
            (Direction::ServerToClient, self.server_app),
        ] {
            let way = &mut ways[index(direction)];
            if way.published == 0 {
                // Never routed: nothing of it skipped the proxy.
                continue;
            }
            match self.table.spliced(&source) {
                Ok(Some(total)) => {
                    news[index(direction)] = total.saturating_sub(way.reported);
                    way.reported = way.reported.max(total);
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "reading SPLICED_BYTES failed"),
            }
        }
        Spliced {
            client_to_server: news[0],
            server_to_client: news[1],
        }
    }

    /// The connection is over: what skipped the proxy since the last [`report`], and the map
    /// entries gone.
    ///
    /// [`report`]: Self::report
    pub fn finish(&self) -> Spliced {
        let result = self.report();
        let ways = self.ways.lock().unwrap_or_else(PoisonError::into_inner);
        if ways.iter().all(|way| way.published == 0) {
            // Never routed: nothing was spliced, and the programs drop the sockets' counts
            // when they close.
            return result;
        }
        drop(ways);
        for socket in [
            self.client_app,
            self.client_app.peer(),
            self.server_app.peer(),
            self.server_app,
        ] {
            self.table.forget(&socket);
        }
        result
    }
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

/// Progress that also splices: telemetry as `inner`, catch-ups to `pair`.
pub struct Splicing<'a> {
    pub inner: &'a dyn progress::Progress,
    pub pair: Option<&'a SplicePair>,
}

impl progress::Progress for Splicing<'_> {
    fn delivered(&self, direction: Direction, bytes: u64) {
        self.inner.delivered(direction, bytes);
    }

    fn caught_up(&self, direction: Direction, forwarded: u64) {
        if let Some(pair) = self.pair {
            pair.caught_up(direction, forwarded);
        }
    }
}

#[cfg(test)]
mod tests;
