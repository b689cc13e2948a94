//! shunt's mesh model, with no I/O: what the agent knows of the cluster ([`model::MeshState`]),
//! Istio's API types ([`istio`]), the routing compiler that turns them into a
//! [`routing::RouteTable`], the security policies compiled ([`security::PeerAuthnTable`],
//! [`security::RequestAuthnTable`]), request path normalization ([`http_path`]), and the index
//! the data path asks ([`index::MeshIndex`]).
//!
//! Both the agent (to validate and explain) and the proxy (to route) link it; it never links
//! tokio, hyper or aya (`cargo xtask layers` checks that).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ext_authz;
pub mod gateway;
pub mod http_path;
pub mod ids;
pub mod index;
pub mod istio;
pub mod model;
pub mod routing;
pub mod security;
pub mod settings;
pub mod spiffe;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace_config;
