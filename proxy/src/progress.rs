//! How far a forwarded connection has got, in each direction: what the L4 forwarder reports
//! and what telemetry and the splice listen to.

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → server: Istio's "received" bytes.
    ClientToServer,
    /// Server → client: Istio's "sent" bytes.
    ServerToClient,
}

/// Told about bytes as they are delivered, so counters move during long-lived connections.
pub trait Progress: Sync {
    fn delivered(&self, direction: Direction, bytes: u64);

    /// `direction` has caught up: its reader has nothing more for now, and all `delivered`
    /// bytes read so far have been written. Called once per new total.
    fn caught_up(&self, _direction: Direction, _delivered: u64) {}
}

impl Progress for () {
    fn delivered(&self, _: Direction, _: u64) {}
}
