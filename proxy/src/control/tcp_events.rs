//! The reader of the agent's `TCP_EVENTS` ring buffer: each closed connection's kernel
//! figures, decoded and handed to [`TcpWatches::on_event`].

use std::os::fd::OwnedFd;
use std::sync::Arc;

use aya::maps::{Map, MapData, MapError, RingBuf};
use shunt_common::{TcpEvent, map_names};
use tokio::io::unix::AsyncFd;

use crate::telemetry::tcp::TcpWatches;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot use the agent's {} ring buffer: {source}; kernel TCP telemetry falls back to \
         TCP_INFO readings (are the agent and the proxy from the same release?)",
        map_names::TCP_EVENTS
    )]
    Map {
        #[source]
        source: MapError,
    },
    #[error(
        "cannot poll the agent's {} ring buffer: {source}; kernel TCP telemetry falls back to \
         TCP_INFO readings",
        map_names::TCP_EVENTS
    )]
    Poll {
        #[source]
        source: std::io::Error,
    },
}

/// Reads the ring buffer behind `fd` until the task is aborted (a newer descriptor from a
/// reconnected agent replaces it). Must run inside a tokio runtime.
#[expect(
    unsafe_code,
    reason = "registers the ring buffer's descriptor with tokio"
)]
pub fn spawn(fd: OwnedFd, watches: Arc<TcpWatches>) -> Result<tokio::task::JoinHandle<()>, Error> {
    let map_error = |source| Error::Map { source };
    let data = MapData::from_fd(fd).map_err(map_error)?;
    let ring =
        RingBuf::try_from(Map::from_map_data(data).map_err(map_error)?).map_err(map_error)?;
    // SAFETY: the `RingBuf` owns the map's descriptor and never closes or replaces it while
    // the `AsyncFd` owns the `RingBuf`.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Poll {
            source: std::io::Error::other(e.to_string()),
        })?;
    watches.set_kernel_events(true);
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match ring.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::warn!(%error, "kernel TCP events stop; TCP_INFO readings settle connections");
                    watches.set_kernel_events(false);
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Some(event) => watches.on_event(&event),
                    None => tracing::warn!(
                        bytes = item.len(),
                        "a {} record of the wrong size (agent and proxy from different releases?)",
                        map_names::TCP_EVENTS
                    ),
                }
            }
            guard.clear_ready();
        }
    }))
}

/// A record as `sock_ops` wrote it: a `TcpEvent` in the host's byte order.
#[must_use]
pub fn decode(record: &[u8]) -> Option<TcpEvent> {
    if record.len() != size_of::<TcpEvent>() {
        return None;
    }
    let u64_at = |at: usize| {
        record
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let u32_at = |at: usize| {
        record
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    Some(TcpEvent {
        socket_cookie: u64_at(0)?,
        netns_cookie: u64_at(8)?,
        duration_ns: u64_at(16)?,
        bytes_acked: u64_at(24)?,
        bytes_received: u64_at(32)?,
        srtt_us: u32_at(40)?,
        total_retrans: u32_at(44)?,
        lost_out: u32_at(48)?,
        local_ip4_be: u32_at(52)?,
        remote_ip4_be: u32_at(56)?,
        local_port: u32_at(60)?,
        remote_port: u32_at(64)?,
        kind: u32_at(68)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `event` as the kernel lays the `#[repr(C)]` struct out.
    fn bytes(event: &TcpEvent) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [
            event.socket_cookie,
            event.netns_cookie,
            event.duration_ns,
            event.bytes_acked,
            event.bytes_received,
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        for word in [
            event.srtt_us,
            event.total_retrans,
            event.lost_out,
            event.local_ip4_be,
            event.remote_ip4_be,
            event.local_port,
            event.remote_port,
            event.kind,
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out
    }

    #[test]
    fn records_decode_field_by_field_and_wrong_sizes_are_refused() {
        let event = TcpEvent {
            socket_cookie: 1,
            netns_cookie: 2,
            duration_ns: 3,
            bytes_acked: 4,
            bytes_received: 5,
            srtt_us: 6,
            total_retrans: 7,
            lost_out: 8,
            local_ip4_be: 9,
            remote_ip4_be: 10,
            local_port: 11,
            remote_port: 12,
            kind: shunt_common::TCP_SOCKET_UPSTREAM,
        };
        let record = bytes(&event);
        assert_eq!(record.len(), size_of::<TcpEvent>());
        assert_eq!(decode(&record), Some(event));
        for len in [0, record.len() - 1, record.len() + 4] {
            let mut other = record.clone();
            other.resize(len, 0);
            assert_eq!(decode(&other), None, "{len} bytes");
        }
    }
}
