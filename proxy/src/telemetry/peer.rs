//! How one side of a connection or request is named in metrics and access logs: the one
//! place that turns a workload into Istio's `*_workload`, `*_workload_namespace` and
//! `*_principal` values, for the TCP and HTTP reporters alike.

use shunt_mesh::model::Workload;

/// Istio's value for anything the proxy cannot name.
pub const UNKNOWN: &str = "unknown";

/// A peer as telemetry names it; everything it does not know is `unknown`, as Istio writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer<'a> {
    workload: Option<&'a Workload>,
}

impl<'a> Peer<'a> {
    #[must_use]
    pub fn new(workload: Option<&'a Workload>) -> Self {
        Self { workload }
    }

    /// `source_workload` / `destination_workload`: the owning workload's name.
    #[must_use]
    pub fn workload(self) -> &'a str {
        self.workload.map_or(UNKNOWN, |w| &w.workload_name)
    }

    /// `*_workload_namespace`.
    #[must_use]
    pub fn namespace(self) -> &'a str {
        self.workload.map_or(UNKNOWN, |w| &w.namespace)
    }

    /// `source_principal`: the peer's authenticated identity. No connection is authenticated
    /// yet (mTLS comes with the identity work), so it is `unknown`, as Istio reports a
    /// plaintext peer, whatever the mesh knows of the workload.
    #[must_use]
    pub fn principal(self) -> &'a str {
        UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shunt_mesh::testing::pod;

    #[test]
    fn a_peer_is_named_by_its_workload_and_unknown_otherwise() {
        let mut web = pod("shop", "web-6d8f-abcde", [10, 0, 0, 1], "web");
        web.workload_name = "web".into();
        let cases = [
            (Some(&web), ("web", "shop", "unknown")),
            (None, ("unknown", "unknown", "unknown")),
        ];
        for (workload, expected) in cases {
            let peer = Peer::new(workload);
            assert_eq!(
                (peer.workload(), peer.namespace(), peer.principal()),
                expected
            );
        }
    }
}
