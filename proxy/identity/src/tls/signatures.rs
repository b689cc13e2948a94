//! The handshake-signature half of a rustls certificate verifier, the same for every verifier
//! that checks chains itself: rustls's own checks with the verifier's crypto provider.

/// Expands, inside an `impl ServerCertVerifier` (or `ClientCertVerifier`) block whose type has
/// a field `provider: Arc<rustls::crypto::CryptoProvider>`, to `verify_tls12_signature`,
/// `verify_tls13_signature` and `supported_verify_schemes` over that provider's algorithms.
/// The caller's crate must depend on rustls.
#[macro_export]
macro_rules! provider_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
