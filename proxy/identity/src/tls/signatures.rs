//! The handshake-signature half of a rustls certificate verifier, the same for every verifier
//! that checks chains itself (rustls's own checks with the verifier's crypto provider) and for
//! every verifier that wraps another (the inner verifier's checks).

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

/// Expands, inside an `impl ServerCertVerifier` (or `ClientCertVerifier`) block whose type
/// wraps another verifier in the field named `$inner` (any `Arc<dyn ..CertVerifier>`), to
/// `verify_tls12_signature`, `verify_tls13_signature` and `supported_verify_schemes` handed to
/// that verifier: the wrapper adds checks on the certificate, never on the handshake.
/// The caller's crate must depend on rustls.
#[macro_export]
macro_rules! inner_signature_checks {
    ($inner:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.$inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            self.$inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$inner.supported_verify_schemes()
        }
    };
}
