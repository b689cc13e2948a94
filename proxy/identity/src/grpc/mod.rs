//! Istio's CA protocol, `istio.v1.auth.IstioCertificateService/CreateCertificate`, wire-
//! compatible with istiod and ztunnel (`proto/ca.proto`): the [`CaServer`] shunt-agent runs
//! in CA mode, and the [`CaClient`] the proxy fetches certificates with (from shunt-agent or
//! from istiod).

mod client;
mod proto;
mod server;

pub use client::{CaClient, CaClientConfig, ClientError};
pub use proto::{
    AUTHORIZATION, CLUSTER_ID, DEFAULT_PORT, DEFAULT_SERVER_NAME, IMPERSONATED_IDENTITY, pb,
};
pub use server::{Authorizer, CaServer, CaServerConfig, NodeLookup, ServerError, TokenRefusal};

#[cfg(test)]
mod tests;
