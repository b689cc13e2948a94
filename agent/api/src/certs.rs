//! What the proxy reports of the certificates it holds (`/debug/certs` on its metrics port),
//! which `shuntctl certs` reads. shunt-identity's `CertManager` makes these.

use serde::{Deserialize, Serialize};
use shunt_mesh::spiffe::SpiffeId;

/// A tracked identity's state, as `shuntctl certs` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// A certificate valid now is held.
    Valid,
    /// No certificate yet, and no fetch has failed.
    Pending,
    /// The certificate held has expired (or is not valid yet) and no new one came.
    Expired,
    /// No certificate, and the last fetch failed.
    Error,
}

impl CertState {
    /// As in the JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Pending => "pending",
            Self::Expired => "expired",
            Self::Error => "error",
        }
    }
}

/// One certificate of a chain, as `shuntctl certs` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCertStatus {
    /// Subject, RFC 4514 (empty for a workload certificate).
    pub subject: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// Serial, lower-case hex.
    pub serial: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// A tracked identity and its certificate: one element of `/debug/certs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// The identity.
    pub identity: SpiffeId,
    /// Whether a usable certificate is held.
    pub state: CertState,
    /// The leaf's serial, lower-case hex.
    pub serial: Option<String>,
    /// The leaf's `NotBefore`, RFC 3339.
    pub not_before: Option<String>,
    /// The leaf's `NotAfter`, RFC 3339.
    pub not_after: Option<String>,
    /// When the next certificate is due, RFC 3339.
    pub next_rotation: Option<String>,
    /// The chain, leaf first.
    pub chain: Vec<ChainCertStatus>,
    /// The last fetch's error, until a fetch succeeds.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_named_as_in_the_json() {
        for state in [
            CertState::Valid,
            CertState::Pending,
            CertState::Expired,
            CertState::Error,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
    }
}
