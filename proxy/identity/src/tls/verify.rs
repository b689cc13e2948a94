//! The certificate verifiers of HBONE's mutual TLS: webpki checks the chain, then the SPIFFE
//! identity is checked (rustls knows nothing of URI SANs).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, CommonState, DistinguishedName, OtherError, RootCertStore};
use shunt_mesh::spiffe::SpiffeId;

use crate::cert;

/// Why a peer's certificate, whose chain verified, is refused.
#[derive(thiserror::Error)]
pub enum PeerError {
    /// The certificate names no SPIFFE identity (or several).
    #[error("the peer's certificate has no single SPIFFE identity: {0}")]
    NoIdentity(String),
    /// The server is not the workload the client meant to reach.
    #[error("the server presented {found}, but {expected} was expected")]
    WrongIdentity {
        /// The identity the client expected.
        expected: SpiffeId,
        /// The identity in the server's certificate.
        found: SpiffeId,
    },
    /// The client is from another trust domain.
    #[error("the client presented {found}, which is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The server's trust domain.
        expected: String,
        /// The identity in the client's certificate.
        found: SpiffeId,
    },
}

// rustls prints the errors it wraps with `Debug`; make that the readable message.
impl fmt::Debug for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn refuse(error: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

fn identity_of(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
    cert::identity(end_entity, "peer certificate")
        .map_err(|e| refuse(PeerError::NoIdentity(e.to_string())))
}

/// The identity the peer's leaf certificate certifies, once the handshake has verified it:
/// the source principal on the server side, the destination's on the client side.
#[must_use]
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    cert::identity(leaf, "peer certificate").ok()
}

/// The client's check of the server: the chain verifies against the bundle for server auth,
/// at the handshake's time, and the leaf's SPIFFE id is exactly the expected one. The server
/// name (the destination IP) plays no part, nor do DNS SANs.
#[derive(Debug)]
pub(crate) struct ServerIdentityVerifier {
    pub roots: Arc<RootCertStore>,
    pub expected: SpiffeId,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = identity_of(end_entity)?;
        if found != self.expected {
            return Err(refuse(PeerError::WrongIdentity {
                expected: self.expected.clone(),
                found,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::provider_signature_checks!();
}

/// The server's check of the client: a certificate is required, its chain verifies against
/// the bundle for client auth (webpki), and its SPIFFE id is in the server's trust domain.
#[derive(Debug)]
pub(crate) struct ClientIdentityVerifier {
    /// rustls' webpki client verifier, for the chain.
    pub chain: Arc<dyn ClientCertVerifier>,
    pub trust_domain: String,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // As ztunnel: no hints; every client has one certificate to send.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = identity_of(end_entity)?;
        if found.trust_domain() != self.trust_domain {
            return Err(refuse(PeerError::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                found,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    crate::inner_signature_checks!(chain);
}
