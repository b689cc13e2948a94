//! TLS origination: DestinationRule `trafficPolicy.tls` `SIMPLE` and `MUTUAL`, as Istio's
//! sidecar originates TLS to a ServiceEntry host the app calls in plain HTTP (istio.io's
//! "Egress TLS Origination"). Every upstream connection of such a cluster, pooled HTTP and
//! L4 alike, is wrapped in TLS right after its dial ([`Built::secure`]).
//!
//! A cluster's rustls configs are built once per policy ([`ClusterTls`]: when the routing
//! table brings a different `tls`, not per connection), with ring and TLS 1.2 and 1.3:
//! external servers are not HBONE peers, so `shunt_identity::crypto`'s TLS-1.3-only provider
//! does not fit them.
//!
//! Fail closed: a rejected rule ([`UpstreamTls::Refuse`]), a `credentialName` (the proxy
//! reads no Secrets in local mode) or a certificate file that cannot be read refuses every
//! connection of the cluster; nothing is ever sent in plaintext in its place. A failed build
//! is tried again on the next routing-table change and at most every [`RETRY_BUILD`] while
//! the cluster is used, so a fixed file is picked up without a config change.
//!
//! `DISABLE` and `ISTIO_MUTUAL` are the mesh's own mTLS (HBONE, decided by the dial) and
//! leave the connection as the dial made it.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor, verify_server_name,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, OtherError, RootCertStore};
use shunt_mesh::ids::EndpointAddr;
use shunt_mesh::routing::{
    ClientCertificate, Cluster, ObjectRef, ServerVerification, TlsOrigination, TrustRoots,
    UpstreamTls,
};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::dial::Dialed;
use super::transport::Transport;

/// How long a cluster whose TLS settings could not be built waits before building them again
/// (when it is used; a routing-table change retries at once).
pub const RETRY_BUILD: Duration = Duration::from_secs(5);

/// Where Debian, Ubuntu, Alpine (and, second, Fedora and RHEL) keep the system's CA bundle:
/// what `TrustRoots::System` trusts.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Why a cluster's connections cannot be secured as its DestinationRule asks.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The rule in force was rejected (its error, in the agent's config errors, names the
    /// field); refused rather than sent in plaintext.
    #[error(
        "{rule} asks for TLS but was rejected (the agent's config errors name the field): \
         connections are refused, never sent in plaintext, until it is fixed"
    )]
    Rejected { rule: ObjectRef },
    /// `credentialName`: a Kubernetes Secret, which the proxy cannot read in local mode.
    #[error(
        "{rule}: tls.credentialName {name:?} names a Kubernetes Secret, which needs the \
         Kubernetes mode (in local mode the proxy reads no Secrets): connections are refused; \
         name PEM files on the node with caCertificates, clientCertificate and privateKey \
         instead"
    )]
    Credential { rule: String, name: Arc<str> },
    /// A certificate or key file could not be read.
    #[error("{rule}: cannot read tls.{field} {path} (does the file exist on the node?): {source}")]
    Read {
        rule: String,
        field: &'static str,
        path: Arc<str>,
        source: io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{rule}: tls.{field} {path}: {reason}")]
    Pem {
        rule: String,
        field: &'static str,
        path: Arc<str>,
        reason: String,
    },
    /// A CA certificate cannot be a trust anchor.
    #[error("{rule}: tls.caCertificates {path}: certificate {index} is not a usable CA: {source}")]
    Anchor {
        rule: String,
        path: Arc<str>,
        index: usize,
        source: rustls::Error,
    },
    /// The system trust store is missing or empty.
    #[error(
        "{rule}: no tls.caCertificates, and no system CA bundle at {SYSTEM_BUNDLES:?} to verify \
         the server with (name a PEM file with caCertificates)"
    )]
    NoSystemRoots { rule: String },
    /// The client certificate and key do not go together (or rustls cannot use the key).
    #[error(
        "{rule}: tls.clientCertificate {certificate_chain} with tls.privateKey {private_key}: \
         {source}"
    )]
    ClientCertificate {
        rule: String,
        certificate_chain: Arc<str>,
        private_key: Arc<str>,
        source: rustls::Error,
    },
    /// No SNI can be sent for the host.
    #[error(
        "{rule}: host {host:?} is not a name TLS can send as SNI (a wildcard host?): set tls.sni"
    )]
    ServerName { rule: String, host: String },
    /// rustls refused the settings.
    #[error("{rule}: the TLS settings cannot be used: {reason}")]
    Config { rule: String, reason: String },
    /// The handshake failed: the server's certificate did not verify, it asked for a client
    /// certificate, no common version or suite, or the connection broke.
    #[error("TLS handshake with {addr} (SNI {sni}) failed: {source}")]
    Handshake {
        addr: EndpointAddr,
        sni: String,
        source: io::Error,
    },
    /// The handshake did not finish within the cluster's connect timeout.
    #[error("TLS handshake with {addr} (SNI {sni}) did not finish within {timeout:?}")]
    Timeout {
        addr: EndpointAddr,
        sni: String,
        timeout: Duration,
    },
}

impl TlsError {
    /// A handshake failed (an upstream connect failure: retried by `retryOn: connect-failure`,
    /// counted by outlier detection), as opposed to settings that refuse every connection.
    #[must_use]
    pub fn is_handshake(&self) -> bool {
        matches!(self, Self::Handshake { .. } | Self::Timeout { .. })
    }

    /// A build that a fixed file may cure, so it is worth trying again.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Read { .. }
                | Self::Pem { .. }
                | Self::Anchor { .. }
                | Self::NoSystemRoots { .. }
                | Self::ClientCertificate { .. }
        )
    }
}

/// The ALPN a connection offers: what the pool it is for speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// An opaque L4 connection: none.
    None,
    /// An HTTP/1.1 pool: `http/1.1`.
    Http1,
    /// An h2 pool: `h2`.
    H2,
}

/// ring with its default suites (TLS 1.3 and the ECDHE TLS 1.2 ones), for servers outside
/// the mesh.
#[expect(
    deprecated,
    reason = "rustls deprecates ring's provider for lacking post-quantum key exchange; ring is \
              the provider shunt builds with (no aws-lc-rs)"
)]
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What a cluster's policy makes of its connections.
enum Security {
    /// The bytes as the dial carries them.
    Plain,
    Originate(Originator),
    /// Every connection refused, with why.
    Refuse(Arc<TlsError>),
}

/// TLS origination settings, built.
struct Originator {
    server_name: ServerName<'static>,
    /// The same settings offering no ALPN, `http/1.1` and `h2`.
    none: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl Originator {
    fn config(&self, alpn: Alpn) -> &Arc<ClientConfig> {
        match alpn {
            Alpn::None => &self.none,
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
        }
    }
}

/// What a policy is built from: a cluster whose table entry says the same is not rebuilt.
#[derive(Clone, PartialEq)]
struct Input {
    tls: Option<UpstreamTls>,
    rule: Option<ObjectRef>,
}

impl Input {
    fn of(cluster: &Cluster) -> Self {
        Self {
            tls: cluster.policy.tls.clone(),
            rule: cluster.policy.source.clone(),
        }
    }
}

/// A cluster's TLS settings as built from one policy. Pooled connections remember the
/// generation they were made under and are reused only under the same one, so a changed
/// policy never reuses a connection secured (or not) the old way.
pub struct Built {
    pub generation: u64,
    security: Security,
    input: Input,
    /// Set when the build failed on a file: try again from then on.
    retry_at: Option<Instant>,
    cluster: Arc<str>,
    /// Handshakes are failing now, so that a run of failures is logged once.
    failing: AtomicBool,
}

impl fmt::Debug for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = match &self.security {
            Security::Plain => "plain",
            Security::Originate(_) => "originate",
            Security::Refuse(_) => "refuse",
        };
        f.debug_struct("Built")
            .field("generation", &self.generation)
            .field("security", &security)
            .finish_non_exhaustive()
    }
}

impl Built {
    /// `Some` when the policy refuses every connection: check before dialling, so a refused
    /// cluster never connects.
    #[must_use]
    pub fn refusal(&self) -> Option<Arc<TlsError>> {
        match &self.security {
            Security::Refuse(error) => Some(error.clone()),
            Security::Plain | Security::Originate(_) => None,
        }
    }

    /// `dialed` as the policy wants it: as it is, or wrapped in TLS (the handshake bounded by
    /// `deadline`, the end of the connect timeout that `timeout` was).
    pub async fn secure(
        &self,
        dialed: Dialed,
        addr: EndpointAddr,
        alpn: Alpn,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Dialed, Arc<TlsError>> {
        let originator = match &self.security {
            Security::Plain => return Ok(dialed),
            Security::Refuse(error) => return Err(error.clone()),
            Security::Originate(originator) => originator,
        };
        let Dialed {
            stream,
            delivered,
            tunnel,
        } = dialed;
        let sni = || originator.server_name.to_str().into_owned();
        let connector = TlsConnector::from(originator.config(alpn).clone());
        let handshake = connector.connect(originator.server_name.clone(), stream);
        let result = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => Ok(Dialed {
                stream: Transport::Tls(Box::new(stream)),
                delivered,
                tunnel,
            }),
            Ok(Err(source)) => Err(TlsError::Handshake {
                addr,
                sni: sni(),
                source,
            }),
            Err(_) => Err(TlsError::Timeout {
                addr,
                sni: sni(),
                timeout,
            }),
        };
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(cluster = %self.cluster, "TLS handshakes with the cluster's endpoints succeed again");
                }
            }
            Err(error) => {
                if self.failing.swap(true, Ordering::AcqRel) {
                    tracing::debug!(cluster = %self.cluster, %error, "TLS origination failed");
                } else {
                    tracing::warn!(cluster = %self.cluster, %error, "TLS origination failed (further failures are logged at debug level until one succeeds)");
                }
            }
        }
        result.map_err(Arc::new)
    }
}

/// A cluster's TLS settings, rebuilt when its policy changes.
pub struct ClusterTls {
    cluster: Arc<str>,
    host: Arc<str>,
    current: Mutex<Arc<Built>>,
    /// `insecureSkipVerify` is warned about once per cluster, not at every rebuild.
    warned_insecure: AtomicBool,
}

impl ClusterTls {
    /// The settings of `cluster` (named `name` in logs), built now.
    #[must_use]
    pub fn new(cluster: &Cluster, name: &str) -> Self {
        let this = Self {
            cluster: name.into(),
            host: cluster.key.host.0.clone(),
            current: Mutex::new(Arc::new(Built {
                generation: 0,
                security: Security::Plain,
                input: Input {
                    tls: None,
                    rule: None,
                },
                retry_at: None,
                cluster: name.into(),
                failing: AtomicBool::new(false),
            })),
            warned_insecure: AtomicBool::new(false),
        };
        this.rebuild(Input::of(cluster));
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Built>> {
        match self.current.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// After a routing-table change: rebuilt if the policy's `tls` (or the rule supplying
    /// it) changed, or the last build failed.
    pub fn refresh(&self, cluster: &Cluster) {
        let input = Input::of(cluster);
        let current = self.lock().clone();
        if current.input != input || current.retry_at.is_some() {
            self.rebuild(input);
        }
    }

    /// The settings in force; a build that failed on a file is tried again once
    /// [`RETRY_BUILD`] has passed.
    #[must_use]
    pub fn current(&self) -> Arc<Built> {
        let current = self.lock().clone();
        if current
            .retry_at
            .is_some_and(|retry_at| Instant::now() >= retry_at)
        {
            self.rebuild(current.input.clone());
            return self.lock().clone();
        }
        current
    }

    fn rebuild(&self, input: Input) {
        let security = match build(&input, &self.host) {
            Ok(None) => Security::Plain,
            Ok(Some(originator)) => Security::Originate(originator),
            Err(error) => {
                tracing::warn!(cluster = %self.cluster, %error, "upstream TLS settings cannot be built: the cluster's connections are refused");
                Security::Refuse(Arc::new(error))
            }
        };
        let retry_at = match &security {
            Security::Refuse(error) if error.is_retryable() => Some(Instant::now() + RETRY_BUILD),
            _ => None,
        };
        if let Some(UpstreamTls::Originate(TlsOrigination {
            verify: ServerVerification::InsecureSkipVerify,
            ..
        })) = &input.tls
            && matches!(security, Security::Originate(_))
            && !self.warned_insecure.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(
                cluster = %self.cluster,
                rule = %rule_name(input.rule.as_ref()),
                "tls.insecureSkipVerify: the server's certificate is not verified; the bytes \
                 are encrypted but the server is not authenticated"
            );
        }
        let mut current = self.lock();
        // Plain to plain: the pooled connections are still right.
        let generation = if matches!(
            (&current.security, &security),
            (Security::Plain, Security::Plain)
        ) {
            current.generation
        } else {
            current.generation + 1
        };
        *current = Arc::new(Built {
            generation,
            security,
            input,
            retry_at,
            cluster: self.cluster.clone(),
            failing: AtomicBool::new(false),
        });
    }
}

fn rule_name(rule: Option<&ObjectRef>) -> String {
    rule.map_or_else(
        || "the DestinationRule in force".to_owned(),
        ToString::to_string,
    )
}

/// The originator `input` asks for; `None`: no TLS from here (none asked, `DISABLE`, or the
/// mesh's own `ISTIO_MUTUAL`).
fn build(input: &Input, host: &str) -> Result<Option<Originator>, TlsError> {
    let origination = match &input.tls {
        None | Some(UpstreamTls::Disable | UpstreamTls::IstioMutual { .. }) => return Ok(None),
        Some(UpstreamTls::Refuse { rule }) => {
            return Err(TlsError::Rejected { rule: rule.clone() });
        }
        Some(UpstreamTls::Originate(origination)) => origination,
    };
    let rule = rule_name(input.rule.as_ref());
    let name = origination.sni.as_deref().unwrap_or(host);
    let server_name = (!name.starts_with('*'))
        .then(|| ServerName::try_from(name.to_owned()).ok())
        .flatten()
        .ok_or_else(|| TlsError::ServerName {
            rule: rule.clone(),
            host: name.to_owned(),
        })?;
    let verifier = verifier(&rule, &origination.verify)?;
    let config_error = |error: rustls::Error| TlsError::Config {
        rule: rule.clone(),
        reason: error.to_string(),
    };
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &origination.client_certificate {
        None => builder.with_no_client_auth(),
        Some(ClientCertificate::Credential(name)) => {
            return Err(TlsError::Credential {
                rule,
                name: name.clone(),
            });
        }
        Some(ClientCertificate::Files {
            certificate_chain,
            private_key,
        }) => {
            let chain = read_certs(&rule, "clientCertificate", certificate_chain)?;
            let key = read_key(&rule, private_key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::ClientCertificate {
                    rule: rule.clone(),
                    certificate_chain: certificate_chain.clone(),
                    private_key: private_key.clone(),
                    source,
                })?
        }
    };
    let offering = |protocols: &[&[u8]]| {
        let mut config = config.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Some(Originator {
        server_name,
        none: offering(&[]),
        http1: offering(&[b"http/1.1"]),
        h2: offering(&[b"h2"]),
    }))
}

fn verifier(
    rule: &str,
    verify: &ServerVerification,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let (roots, subject_alt_names) = match verify {
        ServerVerification::InsecureSkipVerify => {
            return Ok(Arc::new(SkipVerify {
                provider: PROVIDER.clone(),
            }));
        }
        ServerVerification::Verify {
            roots,
            subject_alt_names,
        } => (roots, subject_alt_names),
    };
    let roots = Arc::new(match roots {
        TrustRoots::CaFile(path) => read_roots(rule, path)?,
        TrustRoots::Credential(name) => {
            return Err(TlsError::Credential {
                rule: rule.to_owned(),
                name: name.clone(),
            });
        }
        TrustRoots::System => system_roots(rule)?,
    });
    if subject_alt_names.is_empty() {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, PROVIDER.clone())
            .build()
            .map_err(|error| TlsError::Config {
                rule: rule.to_owned(),
                reason: error.to_string(),
            })?;
        return Ok(verifier);
    }
    Ok(Arc::new(SanVerifier {
        roots,
        subject_alt_names: subject_alt_names.clone(),
        provider: PROVIDER.clone(),
    }))
}

fn read(rule: &str, field: &'static str, path: &Arc<str>) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&**path).map_err(|source| TlsError::Read {
        rule: rule.to_owned(),
        field,
        path: path.clone(),
        source,
    })
}

fn read_certs(
    rule: &str,
    field: &'static str,
    path: &Arc<str>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(rule, field, path)?;
    let bad = |reason: String| TlsError::Pem {
        rule: rule.to_owned(),
        field,
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("malformed PEM: {error}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM CERTIFICATE block (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs)
}

fn read_key(rule: &str, path: &Arc<str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(rule, "privateKey", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::Pem {
        rule: rule.to_owned(),
        field: "privateKey",
        path: path.clone(),
        reason: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1 expected): {error}"),
    })
}

/// Every certificate of the file must be a usable CA: a bundle that is half unreadable is
/// an operator's mistake, said at once rather than found at the first handshake.
fn read_roots(rule: &str, path: &Arc<str>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (index, cert) in read_certs(rule, "caCertificates", path)?
        .into_iter()
        .enumerate()
    {
        store.add(cert).map_err(|source| TlsError::Anchor {
            rule: rule.to_owned(),
            path: path.clone(),
            index,
            source,
        })?;
    }
    Ok(store)
}

/// The node's CA bundle. Unlike a named file, certificates webpki cannot use are skipped: a
/// distribution's bundle carries a few.
fn system_roots(rule: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for path in SYSTEM_BUNDLES {
        let Ok(pem) = std::fs::read(path) else {
            continue;
        };
        let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        let (added, ignored) = store.add_parsable_certificates(certs);
        if ignored > 0 {
            tracing::debug!(
                bundle = path,
                added,
                ignored,
                "system CA bundle: some certificates are not usable as trust anchors"
            );
        }
        if added > 0 {
            return Ok(store);
        }
    }
    Err(TlsError::NoSystemRoots {
        rule: rule.to_owned(),
    })
}

/// Why a server certificate whose chain verified is refused under `subjectAltNames`.
struct SanMismatch {
    expected: Vec<Arc<str>>,
}

// rustls prints the errors it wraps with `Debug`: make that the readable message.
impl fmt::Debug for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate carries none of tls.subjectAltNames {:?}",
            self.expected
        )
    }
}

impl std::error::Error for SanMismatch {}

/// `subjectAltNames` as Envoy's SAN matchers check them: the chain must verify against the
/// roots, and the leaf must carry one of the names as a DNS SAN (its wildcards apply) or a
/// URI SAN (exactly). The SNI plays no part then, as in Envoy.
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    subject_alt_names: Vec<Arc<str>>,
    provider: Arc<CryptoProvider>,
}

impl SanVerifier {
    fn matches(&self, parsed: &ParsedCertificate<'_>, end_entity: &CertificateDer<'_>) -> bool {
        // Parsed only if a URI is asked for.
        let mut uris: Option<Vec<String>> = None;
        self.subject_alt_names.iter().any(|san| {
            if san.contains(':') {
                uris.get_or_insert_with(|| {
                    shunt_identity::cert::uri_sans(end_entity, "server certificate")
                        .unwrap_or_default()
                })
                .iter()
                .any(|uri| **uri == **san)
            } else {
                ServerName::try_from(&**san)
                    .is_ok_and(|name| verify_server_name(parsed, &name).is_ok())
            }
        })
    }
}

impl ServerCertVerifier for SanVerifier {
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
        if self.matches(&parsed, end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(SanMismatch {
                    expected: self.subject_alt_names.clone(),
                })),
            )))
        }
    }

    shunt_identity::provider_signature_checks!();
}

/// `insecureSkipVerify: true`: any certificate is accepted. The handshake's signatures are
/// still checked, so the server holds the key of the certificate it sent, whatever that is.
#[derive(Debug)]
pub(crate) struct SkipVerify {
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    shunt_identity::provider_signature_checks!();
}

#[cfg(test)]
mod tests;
