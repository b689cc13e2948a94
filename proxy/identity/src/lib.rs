//! Workload identity for shunt, as Istio and ztunnel do it: SPIFFE certificates issued by an
//! Istio-compatible CA, kept fresh per identity, and the rustls configurations HBONE's
//! mutual TLS uses.
//!
//! - [`ca`]: the CA signer (plug-in CA files or a self-signed root), istiod's leaf profile.
//! - [`grpc`]: `istio.v1.auth.IstioCertificateService`, wire-compatible with istiod: the
//!   server (with node authorization, ztunnel's model) and the client.
//! - [`csr`], [`workload`]: a key and CSR for an identity; an issued certificate.
//! - [`provider`]: the [`provider::CertProvider`] seam (the gRPC client, or a CA in process).
//! - [`manager`]: [`manager::CertManager`], what the proxy holds: fetches, rotates, reports.
//! - [`tls`]: the client and server configs for HBONE, and the peer's identity.
//! - [`cert`], [`trust`], [`crypto`]: certificate facts, the trust bundle, the TLS provider.
//! - [`keypair`]: a TLS server's own chain and key from PEM (gateway credentials), checked.
//!
//! The SPIFFE id type itself is shunt-mesh's ([`SpiffeId`]), so the model can name
//! identities without TLS.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ca;
pub mod cert;
pub mod crypto;
pub mod csr;
pub mod grpc;
pub mod keypair;
pub mod manager;
pub mod provider;
pub mod tls;
pub mod trust;
pub mod workload;

#[cfg(test)]
mod test_support;

pub use shunt_mesh::spiffe::SpiffeId;
