//! HBONE's mutual TLS: the rustls [`client_config`] and [`server_config`], and the peer's
//! identity after a handshake ([`peer_identity`]).

mod config;
mod signatures;
mod verify;

pub use config::{CurrentCert, Error, FixedCert, client_config, server_config};
pub use verify::{PeerError, peer_identity};

#[cfg(test)]
mod tests;
