//! The CA: istiod's signer, for meshes where shunt-agent is the CA.
//!
//! Key material comes from Istio's plug-in CA layout ([`CaSigner::from_plugin_dir`], or the
//! same files as PEM text from a `cacerts` / `istio-ca-secret` Secret,
//! [`CaSigner::from_pem`]) or from a self-signed root that is generated once and kept in a
//! state directory ([`CaSigner::self_signed`]). [`CaSigner::sign`] checks a CSR and issues a
//! workload certificate with istiod's profile (`profile.rs`).

mod error;
mod profile;
mod request;
mod signer;
mod store;

pub use error::Error;
pub use profile::ROOT_LIFETIME;
pub use request::csr_identity;
pub use signer::{CaSigner, SignerOptions};
pub use store::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaPems, ROOT_CERT_FILE, SELF_SIGNED_CERT_FILE,
    SELF_SIGNED_KEY_FILE, has_plugin, read_plugin, self_signed_root,
};

#[cfg(test)]
mod tests;
