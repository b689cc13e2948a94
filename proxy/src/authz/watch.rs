//! Policy changes reach connections already open, as ztunnel's `PolicyWatcher` does: an L4
//! connection is evaluated again whenever the mesh state changes, and closed once the new
//! policies deny it. HTTP needs none of this: every request is evaluated when it comes.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use shunt_mesh::ids::PodUid;
use shunt_mesh::security::authz::Decision;

use super::{AuthzMetrics, Connection};
use crate::peer_security::PeerSecurity;
use crate::state::StateStore;

/// What an open L4 connection was allowed as, kept to evaluate it again.
#[derive(Clone, Debug)]
pub struct Watched {
    /// The destination pod, looked up again in each new state (its labels may change what
    /// selects it).
    pub destination: PodUid,
    pub security: PeerSecurity,
    pub source_ip: Ipv4Addr,
    pub destination_addr: SocketAddrV4,
    pub sni: Option<String>,
}

/// Resolves with the decision that denies the connection, once a new mesh state does; never
/// while the policies allow it. A destination gone from the state is left to its pod's drain.
pub async fn denied(store: &StateStore, metrics: &AuthzMetrics, watched: &Watched) -> Decision {
    let mut changes = store.subscribe();
    loop {
        if changes.changed().await.is_err() {
            // The store is gone with the proxy: nothing will change any more.
            return std::future::pending().await;
        }
        let index = store.load();
        let Some(destination) = index.workload_by_uid(watched.destination.as_str()) else {
            continue;
        };
        let connection = Connection {
            destination,
            security: &watched.security,
            source_ip: watched.source_ip,
            destination_addr: watched.destination_addr,
            sni: watched.sni.as_deref(),
        };
        let decision = connection.decide(&index, None);
        if !decision.allowed {
            metrics.record(&decision);
            return decision;
        }
    }
}
