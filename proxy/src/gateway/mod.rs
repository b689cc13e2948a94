//! Gateway servers' TLS: the credentials the agent sends for them ([`credentials`]), and the
//! rustls configs terminating servers hand their handshakes ([`tls`]).
//!
//! Below `conn` (whose gateway listener picks a server by SNI, then terminates with
//! [`GatewayTls::server_config`]) and `context` (which holds the [`GatewayTls`]); above
//! shunt-identity, whose certificate manager backs `ISTIO_MUTUAL`.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod metrics;
pub mod tls;

pub use credentials::{CredentialStore, Credentials};
pub use metrics::GatewayMetrics;
pub use tls::{GatewayTls, MeshIdentity};
