//! The rustls client and server configurations of HBONE, as ztunnel's
//! `src/tls/workload.rs`: TLS 1.3 with the AES-GCM suites, ALPN `h2`, mutual authentication
//! by SPIFFE identity.

use std::fmt;
use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use shunt_mesh::spiffe::SpiffeId;

use super::verify::{ClientIdentityVerifier, ServerIdentityVerifier};
use crate::crypto::{self, ALPN_H2, PROTOCOL_VERSIONS};
use crate::trust::TrustBundle;
use crate::workload::WorkloadCert;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustls refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// rustls refused the client verifier (an empty trust bundle?).
    #[error("building the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The certificate a server presents, looked up at every handshake, so a listener keeps its
/// configuration across rotations. `None` fails the handshake (no certificate yet, or none
/// valid).
pub trait CurrentCert: Send + Sync + fmt::Debug {
    /// The key and chain to present now.
    fn current(&self) -> Option<Arc<CertifiedKey>>;
}

/// One certificate, always the same (tests, and callers that rebuild their config anyway).
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl CurrentCert for FixedCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[derive(Debug)]
struct ServerResolver(Arc<dyn CurrentCert>);

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

#[derive(Debug)]
struct ClientResolver(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client side of an HBONE connection from a workload holding `cert` to one that must
/// be `expected_server`.
///
/// Presents `cert`; sends no SNI (dial with the destination IP as the `ServerName`, which
/// plays no part in verification); verifies the server's chain against `roots` and requires
/// its SPIFFE id to equal `expected_server` (DNS SANs count for nothing). No session
/// resumption: every connection verifies the server's current certificate.
pub fn client_config(
    cert: &WorkloadCert,
    expected_server: SpiffeId,
    roots: &TrustBundle,
) -> Result<ClientConfig, Error> {
    let provider = crypto::provider();
    let verifier = ServerIdentityVerifier {
        roots: roots.root_store(),
        expected: expected_server,
        provider: Arc::clone(&provider),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientResolver(cert.certified_key())));
    config.enable_sni = false;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The server side of HBONE for one destination workload: presents `certs.current()` at
/// each handshake; requires a client certificate that chains to `roots` (client auth) and
/// names a SPIFFE id in `trust_domain`. No session resumption, so every connection's client
/// certificate is verified.
pub fn server_config(
    certs: Arc<dyn CurrentCert>,
    roots: &TrustBundle,
    trust_domain: &str,
) -> Result<ServerConfig, Error> {
    let provider = crypto::provider();
    let chain =
        WebPkiClientVerifier::builder_with_provider(roots.root_store(), Arc::clone(&provider))
            .build()?;
    let verifier = ClientIdentityVerifier {
        chain,
        trust_domain: trust_domain.to_owned(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(ServerResolver(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}
