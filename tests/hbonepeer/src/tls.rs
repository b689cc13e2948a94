//! The peer's own rustls configurations: written independently of `shunt_identity::tls`
//! (whose behaviour is what the tests check) and configurable to misbehave.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig, SupportedProtocolVersion};
use shunt_identity::SpiffeId;
use shunt_identity::trust::TrustBundle;
use shunt_identity::workload::WorkloadCert;

/// The TLS versions the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Versions {
    /// TLS 1.2 alone.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 alone (HBONE's).
    #[value(name = "1.3")]
    Tls13,
    /// Both.
    Any,
}

static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

impl Versions {
    fn list(self) -> &'static [&'static SupportedProtocolVersion] {
        match self {
            Self::Tls12 => TLS12_ONLY,
            Self::Tls13 => TLS13_ONLY,
            Self::Any => BOTH,
        }
    }
}

/// The cipher suites the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ciphers {
    /// Everything ring has (AES-GCM and ChaCha20-Poly1305, TLS 1.3 and 1.2 suites).
    Default,
    /// The AES-GCM suites alone.
    AesGcm,
    /// ChaCha20-Poly1305 alone.
    Chacha20,
}

#[expect(
    deprecated,
    reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring is \
              the provider shunt builds with, and what the peer must speak"
)]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn provider(ciphers: Ciphers) -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = ring();
    match ciphers {
        Ciphers::Default => {}
        Ciphers::AesGcm => {
            provider.cipher_suites = vec![
                suite::TLS13_AES_128_GCM_SHA256,
                suite::TLS13_AES_256_GCM_SHA384,
                suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ];
        }
        Ciphers::Chacha20 => {
            provider.cipher_suites = vec![
                suite::TLS13_CHACHA20_POLY1305_SHA256,
                suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ];
        }
    }
    Arc::new(provider)
}

fn private_key(cert: &WorkloadCert) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(cert.key_pem().as_bytes()).context("the minted private key")
}

/// What the client is to offer and to require.
pub struct ClientOptions {
    pub versions: Versions,
    pub ciphers: Ciphers,
    pub alpn: Vec<String>,
    /// The certificate to present; `None` presents none.
    pub cert: Option<WorkloadCert>,
    /// The identity the server's certificate must name; `None` accepts any (chain still
    /// verified).
    pub expect_server: Option<SpiffeId>,
    pub roots: TrustBundle,
}

/// The identity the server's certificate named, as the verifier saw it (before judging it).
pub type SeenIdentity = Arc<Mutex<Option<String>>>;

/// The client's configuration, and where its verifier records the server's identity. Sends
/// no SNI, as ztunnel's client; no session resumption.
pub fn client_config(options: ClientOptions) -> Result<(ClientConfig, SeenIdentity)> {
    let provider = provider(options.ciphers);
    let seen = SeenIdentity::default();
    let verifier = ExpectServer {
        roots: options.roots.root_store(),
        expected: options.expect_server,
        provider: Arc::clone(&provider),
        seen: Arc::clone(&seen),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(options.versions.list())
        .context("the client's TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &options.cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain().to_vec(), private_key(cert)?)
            .context("the client certificate")?,
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = false;
    config.alpn_protocols = options.alpn.into_iter().map(String::into_bytes).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, seen))
}

/// A lenient HBONE server's configuration: TLS 1.2 and 1.3 with every ring suite (so what
/// the *client* offers decides), ALPN `h2`, and a client certificate required that chains to
/// `roots`; presents `cert`.
pub fn server_config(cert: &WorkloadCert, roots: &TrustBundle) -> Result<ServerConfig> {
    let provider = provider(Ciphers::Default);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.root_store(), provider.clone())
        .build()
        .context("the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(Versions::Any.list())
        .context("the server's TLS versions")?
        .with_client_cert_verifier(clients)
        .with_single_cert(cert.chain().to_vec(), private_key(cert)?)
        .context("the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a finished handshake negotiated, by rustls' names.
#[derive(Debug, serde::Serialize)]
pub struct Negotiated {
    pub version: Option<String>,
    pub cipher_suite: Option<String>,
    pub alpn: Option<String>,
    /// The identity the peer's certificate names.
    pub peer_identity: Option<String>,
}

impl Negotiated {
    pub fn of(connection: &CommonState) -> Self {
        Self {
            version: connection.protocol_version().map(|v| format!("{v:?}")),
            cipher_suite: connection
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
            alpn: connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_identity: shunt_identity::tls::peer_identity(connection).map(|id| id.to_string()),
        }
    }
}

/// The client's check of the server: the chain verifies against the cluster's root, and the
/// leaf's SPIFFE id is the expected one (when one is expected).
#[derive(Debug)]
struct ExpectServer {
    roots: Arc<RootCertStore>,
    expected: Option<SpiffeId>,
    provider: Arc<CryptoProvider>,
    seen: SeenIdentity,
}

impl ServerCertVerifier for ExpectServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = shunt_identity::cert::identity(end_entity, "the server's certificate")
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(found.to_string());
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.expected {
            Some(expected) if *expected != found => Err(rustls::Error::General(format!(
                "the server presented {found}, but {expected} was expected"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    shunt_identity::provider_signature_checks!();
}
