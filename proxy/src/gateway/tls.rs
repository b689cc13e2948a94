//! TLS termination for gateway servers: the rustls [`ServerConfig`] a terminating server
//! (`SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`) hands its handshakes, as Envoy's gateway listener
//! builds one per server from the Gateway's `tls` block.
//!
//! - `SIMPLE`: the chain and key of the credential: a Secret the agent sent
//!   ([`CredentialStore`]) or `serverCertificate`/`privateKey` files.
//! - `MUTUAL`: the same, and a client certificate is required, verified against the
//!   credential's CA (`ca.crt`, or `caCertificates`) and, when `subjectAltNames` is set,
//!   carrying one of them (DNS, URI, IP or email SAN, exact, as Envoy matches).
//! - `ISTIO_MUTUAL`: the gateway pod's workload certificate (shunt-identity's
//!   [`CertManager`], rotations included) and a client certificate from the mesh's roots.
//! - `minProtocolVersion`/`maxProtocolVersion`; `cipherSuites` restricts TLS 1.2 only, as in
//!   Envoy (TLS 1.3's suites are not configurable there either).
//! - ALPN: `h2` then `http/1.1` for HTTP servers, none for TCP and TLS ones.
//!
//! A server whose credential is missing or unusable gets a config whose certificate
//! resolver finds nothing, so every handshake fails with an alert: the failure is counted
//! (`shunt_gateway_credential_errors_total`) and logged once per config, naming the Gateway,
//! the server and the Secret or file. Other servers are unaffected.
//!
//! Configs are cached per (Gateway, `tls` settings, port protocol, identity) and rebuilt when
//! the credential store's version moves: a rotated Secret serves new handshakes while the
//! connections that took the old config keep it. Credentials from files are re-read when
//! their metadata (inode, size, modification time) changes, checked at most every
//! [`FILE_CHECK_INTERVAL`] per server, at the first handshake after it.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DistinguishedName, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use shunt_api::credentials::CredentialMaterial;
use shunt_identity::manager::CertManager;
use shunt_identity::tls::CurrentCert;
use shunt_identity::trust::TrustBundle;
use shunt_identity::{cert, keypair};
use shunt_mesh::gateway::{
    Credential, GatewayProtocol, GatewayServer, SUPPORTED_CIPHER_SUITES, ServerTls, ServerTlsMode,
    TlsVersion,
};
use shunt_mesh::routing::ObjectRef;
use shunt_mesh::spiffe::SpiffeId;

use super::credentials::{CredentialStore, Credentials};
use super::metrics::{CredentialErrorLabels, GatewayMetrics};

/// How often, at most, a server's credential files are checked for a change.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Configs kept before the cache is emptied (a backstop against servers whose settings keep
/// changing: each distinct `tls` block is a key).
const MAX_CACHED: usize = 4096;

/// ALPN for HTTP servers: HTTP/2 preferred (rustls picks in the server's order), HTTP/1.1.
const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a server cannot terminate TLS; each becomes a refusing config, a counted `reason`
/// and a log line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Secret {namespace}/{name} was not sent by the agent: does it exist in namespace \
         {namespace}, and is it named by a gateway server on this node?"
    )]
    Missing { namespace: String, name: String },
    #[error("Secret {namespace}/{name} is unusable: {reason}")]
    Unusable {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    Invalid {
        namespace: String,
        name: String,
        source: keypair::Error,
    },
    #[error(
        "Secret {namespace}/{name}: tls.mode MUTUAL needs a CA, but the Secret has no ca.crt \
         (or cacert) and there is no Secret {namespace}/{name}-cacert holding one"
    )]
    NoCa { namespace: String, name: String },
    #[error("{what}: {reason}")]
    InvalidCa { what: String, reason: String },
    #[error("reading {path}: {source}")]
    ReadFile { path: String, source: io::Error },
    #[error("{path}: {source}")]
    InvalidFile {
        path: String,
        source: keypair::Error,
    },
    #[error("tls.mode MUTUAL with serverCertificate needs caCertificates")]
    NoCaFile,
    #[error(
        "tls.mode ISTIO_MUTUAL: this proxy holds no mesh certificates (it was started \
         without --ca-address)"
    )]
    NoMesh,
    #[error(
        "tls.mode ISTIO_MUTUAL: the gateway pod has no workload identity (service account) in \
         the mesh state"
    )]
    NoIdentity,
    #[error("tls.mode is PASSTHROUGH or unset: this server does not terminate TLS")]
    NotTerminated,
    #[error("tls.minProtocolVersion {min:?} is above maxProtocolVersion {max:?}")]
    Versions { min: TlsVersion, max: TlsVersion },
    #[error("tls.cipherSuites: {name:?} is not supported; supported: {supported}")]
    CipherSuite { name: String, supported: String },
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl Error {
    /// The metric's `reason` label.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::Unusable { .. } => "unusable",
            Self::Invalid { .. } | Self::NoCa { .. } | Self::InvalidCa { .. } => "invalid",
            Self::ReadFile { .. } | Self::InvalidFile { .. } | Self::NoCaFile => "files",
            Self::NoMesh | Self::NoIdentity => "no_workload_certificate",
            Self::NotTerminated => "not_terminated",
            Self::Versions { .. }
            | Self::CipherSuite { .. }
            | Self::Rustls(_)
            | Self::Verifier(_) => "settings",
        }
    }
}

/// The mesh identity `ISTIO_MUTUAL` servers use: the proxy's certificate manager and the
/// mesh's roots (`crate::identity::Identities` holds both).
#[derive(Clone, Debug)]
pub struct MeshIdentity {
    pub manager: CertManager,
    pub roots: TrustBundle,
}

/// What the configs are cached by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    gateway: ObjectRef,
    /// `None` for a plaintext server (refused: it has nothing to terminate with).
    tls: Option<Arc<ServerTls>>,
    protocol: GatewayProtocol,
    /// The gateway pod's identity, for `ISTIO_MUTUAL` only (other modes share one config
    /// across pods).
    identity: Option<SpiffeId>,
}

/// Identifies a file's content well enough to notice a replacement (Kubernetes swaps a
/// mounted Secret's symlink, which changes the inode).
type FileStamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &str) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.ino(),
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

/// The files a config was read from, and how they looked then.
#[derive(Debug)]
struct Files {
    stamps: Vec<(String, FileStamp)>,
    checked: Instant,
}

impl Files {
    fn unchanged(&self) -> bool {
        self.stamps.iter().all(|(path, then)| stamp(path) == *then)
    }
}

#[derive(Debug)]
struct Cached {
    config: Arc<ServerConfig>,
    files: Option<Files>,
}

#[derive(Debug, Default)]
struct Cache {
    version: u64,
    entries: HashMap<Key, Cached>,
}

/// Builds and caches the gateway servers' TLS configs.
#[derive(Debug)]
pub struct GatewayTls {
    credentials: Arc<CredentialStore>,
    metrics: Arc<GatewayMetrics>,
    mesh: Option<MeshIdentity>,
    file_check_interval: Duration,
    cache: Mutex<Cache>,
}

impl GatewayTls {
    /// Configs from `credentials`, counting failures in `metrics`. Without
    /// [`GatewayTls::with_mesh_identity`], `ISTIO_MUTUAL` servers refuse every handshake.
    #[must_use]
    pub fn new(credentials: Arc<CredentialStore>, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            credentials,
            metrics,
            mesh: None,
            file_check_interval: FILE_CHECK_INTERVAL,
            cache: Mutex::default(),
        }
    }

    /// `ISTIO_MUTUAL` servers use `mesh`.
    #[must_use]
    pub fn with_mesh_identity(mut self, mesh: MeshIdentity) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// Files are checked for changes at most every `interval` (tests shorten it).
    #[must_use]
    pub fn with_file_check_interval(mut self, interval: Duration) -> Self {
        self.file_check_interval = interval;
        self
    }

    /// The store the agent's `Credentials` messages replace.
    #[must_use]
    pub fn credentials(&self) -> &Arc<CredentialStore> {
        &self.credentials
    }

    /// The config for a handshake on `server` (already chosen by SNI), on a port of
    /// `protocol`, in a gateway pod whose workload identity is `identity` (needed by
    /// `ISTIO_MUTUAL` only). Never fails: a server that cannot terminate gets a config whose
    /// handshakes fail, counted and logged.
    pub fn server_config(
        &self,
        server: &GatewayServer,
        protocol: GatewayProtocol,
        identity: Option<&SpiffeId>,
    ) -> Arc<ServerConfig> {
        let tls = server.tls.clone();
        let istio_mutual = matches!(
            tls.as_deref().and_then(|tls| tls.mode.as_ref()),
            Some(ServerTlsMode::IstioMutual)
        );
        let key = Key {
            gateway: server.gateway.clone(),
            tls,
            protocol,
            identity: identity.filter(|_| istio_mutual).cloned(),
        };
        let credentials = self.credentials.current();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.version != credentials.version() || cache.entries.len() >= MAX_CACHED {
            cache.entries.clear();
            cache.version = credentials.version();
        }
        if let Some(cached) = cache.entries.get_mut(&key) {
            match &mut cached.files {
                None => return Arc::clone(&cached.config),
                Some(files) if files.checked.elapsed() < self.file_check_interval => {
                    return Arc::clone(&cached.config);
                }
                Some(files) if files.unchanged() => {
                    files.checked = Instant::now();
                    return Arc::clone(&cached.config);
                }
                Some(_) => {}
            }
        }
        let cached = self.build(&key, server, &credentials);
        let config = Arc::clone(&cached.config);
        cache.entries.insert(key, cached);
        config
    }

    fn build(&self, key: &Key, server: &GatewayServer, credentials: &Credentials) -> Cached {
        let mode = key.tls.as_deref().and_then(|tls| tls.mode.as_ref());
        let credential = match mode {
            Some(ServerTlsMode::Simple(credential) | ServerTlsMode::Mutual(credential)) => {
                credential_label(credential)
            }
            Some(ServerTlsMode::IstioMutual) => key
                .identity
                .as_ref()
                .map_or_else(|| "ISTIO_MUTUAL".to_owned(), ToString::to_string),
            Some(ServerTlsMode::Passthrough) | None => "-".to_owned(),
        };
        let files = match mode {
            Some(
                ServerTlsMode::Simple(Credential::Files {
                    certificate,
                    private_key,
                    ca_certificates,
                })
                | ServerTlsMode::Mutual(Credential::Files {
                    certificate,
                    private_key,
                    ca_certificates,
                }),
            ) => {
                // Stamped before reading: a change while they are read shows at the next check.
                let stamps = [
                    Some(certificate),
                    Some(private_key),
                    ca_certificates.as_ref(),
                ]
                .into_iter()
                .flatten()
                .map(|path| (path.to_string(), stamp(path)))
                .collect();
                Some(Files {
                    stamps,
                    checked: Instant::now(),
                })
            }
            _ => None,
        };
        let refusal = |reason: &'static str, message: String| Refusal {
            errors: self.metrics.credential_errors(&CredentialErrorLabels {
                gateway: format!("{}/{}", server.gateway.namespace, server.gateway.name),
                credential: credential.clone(),
                reason,
            }),
            logged: AtomicBool::new(false),
            gateway: server.gateway.to_string(),
            server: server_name(server),
            credential: credential.clone(),
            message,
        };
        let config = match self.try_build(key, credentials, &refusal) {
            Ok(config) => config,
            Err(error) => refusing_config(refusal(error.reason(), error.to_string())),
        };
        Cached {
            config: Arc::new(config),
            files,
        }
    }

    fn try_build(
        &self,
        key: &Key,
        credentials: &Credentials,
        refusal: &dyn Fn(&'static str, String) -> Refusal,
    ) -> Result<ServerConfig, Error> {
        let tls = key.tls.as_deref().ok_or(Error::NotTerminated)?;
        let (resolver, client_roots) = match &tls.mode {
            Some(ServerTlsMode::Simple(credential)) => {
                let (cert, _) = load(credential, credentials, false)?;
                (Resolver::Fixed(cert), None)
            }
            Some(ServerTlsMode::Mutual(credential)) => {
                let (cert, roots) = load(credential, credentials, true)?;
                (Resolver::Fixed(cert), roots)
            }
            Some(ServerTlsMode::IstioMutual) => {
                let mesh = self.mesh.as_ref().ok_or(Error::NoMesh)?;
                let identity = key.identity.clone().ok_or(Error::NoIdentity)?;
                let message = format!(
                    "tls.mode ISTIO_MUTUAL: no valid workload certificate for {identity} yet \
                     (see shuntctl certs)"
                );
                (
                    Resolver::Mesh {
                        cert: mesh.manager.server_cert(identity),
                        refusal: refusal("no_workload_certificate", message),
                    },
                    Some(mesh.roots.root_store()),
                )
            }
            Some(ServerTlsMode::Passthrough) | None => return Err(Error::NotTerminated),
        };
        let versions = protocol_versions(tls.min_version, tls.max_version)?;
        let provider = Arc::new(provider(&tls.cipher_suites)?);
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let chain = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
                if tls.subject_alt_names.is_empty() {
                    builder.with_client_cert_verifier(chain)
                } else {
                    builder.with_client_cert_verifier(Arc::new(SanVerifier {
                        chain,
                        allowed: tls.subject_alt_names.clone(),
                    }))
                }
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn(key.protocol);
        Ok(config)
    }
}

/// The metric's and log's name for a credential.
fn credential_label(credential: &Credential) -> String {
    match credential {
        Credential::Secret { namespace, name } => format!("{namespace}/{name}"),
        Credential::Files { certificate, .. } => certificate.to_string(),
    }
}

fn server_name(server: &GatewayServer) -> String {
    server.name.as_deref().map_or_else(
        || format!("servers[{}]", server.index),
        |name| format!("servers[{}] ({name})", server.index),
    )
}

/// The ALPN protocols a server on a port of `protocol` offers.
fn alpn(protocol: GatewayProtocol) -> Vec<Vec<u8>> {
    if protocol.is_http() {
        ALPN_HTTP.iter().map(|p| p.to_vec()).collect()
    } else {
        Vec::new()
    }
}

/// The certificate and (when `mutual`) the client CA of a credential.
fn load(
    credential: &Credential,
    credentials: &Credentials,
    mutual: bool,
) -> Result<(Arc<CertifiedKey>, Option<Arc<RootCertStore>>), Error> {
    match credential {
        Credential::Secret { namespace, name } => {
            let secret = credentials
                .get(namespace, name)
                .ok_or_else(|| Error::Missing {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })?;
            let (chain, key, ca) = match &secret.material {
                CredentialMaterial::Present {
                    certificate_chain,
                    private_key,
                    ca_certificates,
                } => (certificate_chain, private_key, ca_certificates),
                CredentialMaterial::Unusable { reason } => {
                    return Err(Error::Unusable {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        reason: reason.clone(),
                    });
                }
            };
            let what = format!("Secret {namespace}/{name} certificate chain");
            let cert =
                keypair::certified_key(chain, key, &what).map_err(|source| Error::Invalid {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source,
                })?;
            let roots = if mutual {
                let ca = ca.as_deref().ok_or_else(|| Error::NoCa {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })?;
                Some(root_store(ca, &format!("Secret {namespace}/{name} CA"))?)
            } else {
                None
            };
            Ok((Arc::new(cert), roots))
        }
        Credential::Files {
            certificate,
            private_key,
            ca_certificates,
        } => {
            let chain = read(certificate)?;
            let key = read(private_key)?;
            let cert = keypair::certified_key(&chain, &key, certificate).map_err(|source| {
                Error::InvalidFile {
                    path: certificate.to_string(),
                    source,
                }
            })?;
            let roots = if mutual {
                let path = ca_certificates.as_deref().ok_or(Error::NoCaFile)?;
                Some(root_store(&read(path)?, path)?)
            } else {
                None
            };
            Ok((Arc::new(cert), roots))
        }
    }
}

fn read(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of `pem` as a trust anchor.
fn root_store(pem: &str, what: &str) -> Result<Arc<RootCertStore>, Error> {
    let invalid = |reason: String| Error::InvalidCa {
        what: what.to_owned(),
        reason,
    };
    let mut store = RootCertStore::empty();
    for der in cert::parse_pem(pem, what).map_err(|e| invalid(e.to_string()))? {
        store.add(der).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// The versions between `min` and `max`.
fn protocol_versions(
    min: TlsVersion,
    max: TlsVersion,
) -> Result<Vec<&'static SupportedProtocolVersion>, Error> {
    let versions: Vec<_> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    if versions.is_empty() {
        return Err(Error::Versions { min, max });
    }
    Ok(versions)
}

/// The rustls suite of a `cipherSuites` name ([`SUPPORTED_CIPHER_SUITES`]).
#[must_use]
pub fn tls12_cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => {
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-AES128-GCM-SHA256" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// ring, with every TLS 1.3 suite and, for TLS 1.2, `cipher_suites` in their order (all of
/// ring's when empty).
#[expect(
    deprecated,
    reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring \
              is the provider shunt builds with (no aws-lc-rs)"
)]
fn provider(cipher_suites: &[Arc<str>]) -> Result<CryptoProvider, Error> {
    let ring = rustls::crypto::ring::default_provider();
    if cipher_suites.is_empty() {
        return Ok(ring);
    }
    let mut suites: Vec<SupportedCipherSuite> = ring
        .cipher_suites
        .iter()
        .copied()
        .filter(|suite| suite.version() == &rustls::version::TLS13)
        .collect();
    for name in cipher_suites {
        let suite = tls12_cipher_suite(name).ok_or_else(|| Error::CipherSuite {
            name: name.to_string(),
            supported: SUPPORTED_CIPHER_SUITES.join(", "),
        })?;
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    Ok(CryptoProvider {
        cipher_suites: suites,
        ..ring
    })
}

/// A config whose handshakes all fail: its resolver has no certificate.
#[expect(
    clippy::expect_used,
    reason = "ring's default provider has suites for TLS 1.2 and 1.3, the only way the \
              builder can fail"
)]
fn refusing_config(refusal: Refusal) -> ServerConfig {
    #[expect(deprecated, reason = "ring is the provider shunt builds with")]
    let ring = rustls::crypto::ring::default_provider();
    ServerConfig::builder_with_provider(Arc::new(ring))
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::Refuse(refusal)))
}

/// A server that cannot present a certificate: counted at each handshake, logged once.
#[derive(Debug)]
struct Refusal {
    errors: Counter,
    logged: AtomicBool,
    gateway: String,
    server: String,
    credential: String,
    message: String,
}

impl Refusal {
    fn refuse(&self) {
        self.errors.inc();
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                gateway = %self.gateway,
                server = %self.server,
                credential = %self.credential,
                error = %self.message,
                "gateway server refuses TLS handshakes: {}",
                self.message
            );
        }
    }
}

#[derive(Debug)]
enum Resolver {
    Fixed(Arc<CertifiedKey>),
    Mesh {
        cert: Arc<dyn CurrentCert>,
        refusal: Refusal,
    },
    Refuse(Refusal),
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            Self::Fixed(cert) => Some(Arc::clone(cert)),
            Self::Mesh { cert, refusal } => cert.current().or_else(|| {
                refusal.refuse();
                None
            }),
            Self::Refuse(refusal) => {
                refusal.refuse();
                None
            }
        }
    }
}

/// A verified client chain must also carry one of `subjectAltNames`.
#[derive(Debug)]
struct SanVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed: Vec<Arc<str>>,
}

impl ClientCertVerifier for SanVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = cert::subject_alt_names(end_entity, "client certificate")
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if sans
            .iter()
            .any(|san| self.allowed.iter().any(|allowed| **allowed == *san))
        {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    shunt_identity::inner_signature_checks!(chain);
}

#[cfg(test)]
mod tests;
