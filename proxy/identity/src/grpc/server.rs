//! The CA's gRPC server: `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS,
//! authorizing each request as istiod authorizes ztunnel: the bearer token names a node, and
//! the node may only ask for the identities of the pods it runs.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use shunt_mesh::spiffe::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::proto::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use super::proto::pb::{IstioCertificateRequest, IstioCertificateResponse};
use super::proto::{AUTHORIZATION, DEFAULT_SERVER_NAME, IMPERSONATED_IDENTITY};
use crate::ca::{self, CaSigner};
use crate::cert;
use crate::crypto::{self, ALPN_H2, PROTOCOL_VERSIONS};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Its TLS certificate could not be issued.
    #[error("issuing the CA server's TLS certificate: {0}")]
    ServingCert(#[source] ca::Error),
    /// Its TLS certificate could not be used.
    #[error("the CA server's TLS certificate is unusable: {0}")]
    ServingKey(String),
    /// rustls refused the TLS configuration.
    #[error("building the CA server's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// tonic failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Why a bearer token names no node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Nobody was given this token: `Unauthenticated`, with the authorizer's hint.
    Unknown,
    /// The token is valid but not a node's (another account, no bound pod, ...):
    /// `Unauthenticated` with this reason.
    Refused(String),
    /// The token could not be checked (the API server failed or refused the review):
    /// `Unavailable` with this reason. Never treated as valid.
    Unavailable(String),
}

/// What [`Authorizer::node_for_token`] returns: a future, since a check may ask the API
/// server (a TokenReview).
pub type NodeLookup<'a> = Pin<Box<dyn Future<Output = Result<String, TokenRefusal>> + Send + 'a>>;

/// Who may have which certificate; the agent implements it from what it knows of nodes and
/// pods (ztunnel's model: a node's token, then the identities of that node's pods).
pub trait Authorizer: Send + Sync {
    /// The node a bearer token belongs to (from a TokenReview, or a token file the node's
    /// proxy reads), or why it names none.
    fn node_for_token<'a>(&'a self, token: &'a str) -> NodeLookup<'a>;

    /// Whether `node` may have a certificate for `id` (a pod with that service account
    /// runs there); the error is the reason, sent to the caller and logged.
    fn may_issue(&self, node: &str, id: &SpiffeId) -> Result<(), String>;

    /// What a caller without a known token should fix (where tokens come from, which flag
    /// sends one), appended to the `Unauthenticated` answer and its log line.
    fn token_hint(&self) -> Option<String> {
        None
    }
}

/// How the CA server presents itself and whom it serves.
#[derive(Clone, Debug)]
pub struct CaServerConfig {
    /// DNS names of its TLS certificate beyond `istiod.istio-system.svc`.
    pub extra_dns_names: Vec<String>,
    /// IP addresses of its TLS certificate.
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetime of its TLS certificate; it is re-issued at half-life, between handshakes.
    pub serving_cert_ttl: Duration,
    /// Issue to anyone with a valid CSR, without a token or node check. For local
    /// experiments only: logs a loud warning when the server starts.
    pub allow_unauthenticated: bool,
}

impl Default for CaServerConfig {
    fn default() -> Self {
        Self {
            extra_dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            serving_cert_ttl: Duration::from_secs(24 * 3600),
            allow_unauthenticated: false,
        }
    }
}

/// The CA's gRPC server.
pub struct CaServer {
    signer: Arc<CaSigner>,
    authorizer: Arc<dyn Authorizer>,
    config: CaServerConfig,
}

impl CaServer {
    /// A server signing with `signer`, asking `authorizer` who may have what.
    #[must_use]
    pub fn new(
        signer: Arc<CaSigner>,
        authorizer: Arc<dyn Authorizer>,
        config: CaServerConfig,
    ) -> Self {
        Self {
            signer,
            authorizer,
            config,
        }
    }

    /// Serves on `listener` (istiod's port is [`DEFAULT_PORT`](super::DEFAULT_PORT)) until
    /// `shutdown` completes. The TLS certificate is issued by the CA itself, for
    /// `istiod.istio-system.svc` and the configured names.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        if self.config.allow_unauthenticated {
            tracing::warn!(
                "CA server: allow_unauthenticated is on: ANY caller with a valid CSR gets a \
                 certificate for ANY identity. For local experiments only; never in a cluster"
            );
        }
        let (incoming, accepting) = tls_incoming(listener, Arc::clone(&self.signer), &self.config)?;
        let service = CaService {
            signer: self.signer,
            authorizer: self.authorizer,
            allow_unauthenticated: self.config.allow_unauthenticated,
        };
        let served = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        accepting.abort();
        Ok(served?)
    }
}

type Accepted = Result<TlsStream<TcpStream>, io::Error>;

/// The connections of `listener` once their TLS handshake is done, with the CA's serving
/// certificate, and the task accepting them (abort it when done).
pub(super) fn tls_incoming(
    listener: TcpListener,
    signer: Arc<CaSigner>,
    config: &CaServerConfig,
) -> Result<(ReceiverStream<Accepted>, tokio::task::JoinHandle<()>), ServerError> {
    let serving = ServingCert::new(signer, config)?;
    let mut tls = ServerConfig::builder_with_provider(crypto::provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(serving));
    tls.alpn_protocols = vec![ALPN_H2.to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (sender, receiver) = mpsc::channel(64);
    let accepting = tokio::spawn(accept(listener, acceptor, sender));
    Ok((ReceiverStream::new(receiver), accepting))
}

/// Accepts connections and hands them to tonic once their handshake is done; each handshake
/// runs on its own task so a slow client holds up no one.
async fn accept(listener: TcpListener, acceptor: TlsAcceptor, sender: mpsc::Sender<Accepted>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = sender.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "CA server: accept failed");
                // A full descriptor table clears by itself; do not spin meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = sender.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "CA server: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "CA server: TLS handshake timed out"),
            }
        });
    }
}

/// The server's own certificate, re-issued by the CA at half-life.
#[derive(Debug)]
struct ServingCert {
    signer: Arc<CaSigner>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    ttl: Duration,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServingCert {
    fn new(signer: Arc<CaSigner>, config: &CaServerConfig) -> Result<Self, ServerError> {
        let mut dns_names = vec![DEFAULT_SERVER_NAME.to_owned()];
        dns_names.extend(config.extra_dns_names.iter().cloned());
        let first = issue_serving(
            &signer,
            &dns_names,
            &config.ip_addresses,
            config.serving_cert_ttl,
        )?;
        Ok(Self {
            signer,
            dns_names,
            ip_addresses: config.ip_addresses.clone(),
            ttl: config.serving_cert_ttl,
            current: Mutex::new(first),
        })
    }
}

/// A new serving certificate, and when to replace it (half-way through its life).
fn issue_serving(
    signer: &CaSigner,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    ttl: Duration,
) -> Result<(Arc<CertifiedKey>, SystemTime), ServerError> {
    let unusable = |e: cert::Error| ServerError::ServingKey(e.to_string());
    let (chain_pem, key_pem) = signer
        .issue_server_cert(dns_names, ip_addresses, ttl)
        .map_err(ServerError::ServingCert)?;
    let mut chain = Vec::new();
    for pem in &chain_pem {
        chain.extend(cert::parse_pem(pem, "CA serving certificate").map_err(unusable)?);
    }
    let leaf = chain
        .first()
        .ok_or_else(|| ServerError::ServingKey("the CA returned no certificate".to_owned()))?;
    let leaf = cert::info(leaf, "CA serving certificate").map_err(unusable)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ServerError::ServingKey(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &crypto::provider())?;
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap_or_default();
    Ok((Arc::new(certified), leaf.not_before + lifetime / 2))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if SystemTime::now() >= current.1 {
            match issue_serving(&self.signer, &self.dns_names, &self.ip_addresses, self.ttl) {
                Ok(next) => *current = next,
                // The old certificate still has half its life: keep it, retry next time.
                Err(e) => tracing::warn!(error = %e, "CA server: renewing its TLS certificate"),
            }
        }
        Some(Arc::clone(&current.0))
    }
}

/// The `IstioCertificateService` implementation.
struct CaService {
    signer: Arc<CaSigner>,
    authorizer: Arc<dyn Authorizer>,
    allow_unauthenticated: bool,
}

/// A refused request: the status for the caller, and what the log line says.
struct Refusal {
    status: Status,
    node: String,
    identity: String,
}

impl CaService {
    async fn create(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Vec<String>, Refusal> {
        let claimed = impersonated(request.get_ref());
        let refuse = |status: Status, node: &str| Refusal {
            status,
            node: node.to_owned(),
            identity: claimed
                .as_ref()
                .map_or_else(|| "-".to_owned(), Clone::clone),
        };

        let node = if self.allow_unauthenticated {
            None
        } else {
            let unauthenticated = |reason: String| {
                let message = match self.authorizer.token_hint() {
                    Some(hint) => format!("{reason}; {hint}"),
                    None => reason,
                };
                refuse(Status::unauthenticated(message), "-")
            };
            let token = bearer_token(request.metadata()).map_err(unauthenticated)?;
            let node = match self.authorizer.node_for_token(token).await {
                Ok(node) => node,
                Err(TokenRefusal::Unknown) => {
                    return Err(unauthenticated(
                        "the bearer token is not known to this CA".to_owned(),
                    ));
                }
                Err(TokenRefusal::Refused(reason)) => return Err(unauthenticated(reason)),
                Err(TokenRefusal::Unavailable(reason)) => {
                    return Err(refuse(Status::unavailable(reason), "-"));
                }
            };
            Some(node)
        };
        let node_name = node.as_deref().unwrap_or("-");

        let request = request.into_inner();
        let requested = match &claimed {
            Some(text) => text.parse::<SpiffeId>().map_err(|e| {
                refuse(
                    Status::invalid_argument(format!("metadata.{IMPERSONATED_IDENTITY}: {e}")),
                    node_name,
                )
            })?,
            // A caller asking for itself: the identity is the one its CSR names.
            None => ca::csr_identity(&request.csr)
                .map_err(|e| refuse(Status::invalid_argument(e.to_string()), node_name))?,
        };
        let refuse = |status: Status| Refusal {
            status,
            node: node_name.to_owned(),
            identity: requested.to_string(),
        };
        if let Some(node) = &node {
            self.authorizer
                .may_issue(node, &requested)
                .map_err(|reason| {
                    refuse(Status::permission_denied(format!(
                        "node {node} may not have a certificate for {requested}: {reason}"
                    )))
                })?;
        }
        let ttl = u64::try_from(request.validity_duration)
            .map(Duration::from_secs)
            .map_err(|_| {
                refuse(Status::invalid_argument(format!(
                    "validity_duration is {} seconds; it must not be negative",
                    request.validity_duration
                )))
            })?;
        self.signer
            .sign(&request.csr, &requested, ttl)
            .map_err(|e| {
                if e.is_bad_request() {
                    refuse(Status::invalid_argument(e.to_string()))
                } else {
                    refuse(Status::internal(format!("the CA could not sign: {e}")))
                }
            })
            .inspect(|_| {
                tracing::info!(node = node_name, identity = %requested, "CA: issued a certificate");
            })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        match self.create(request).await {
            Ok(cert_chain) => Ok(Response::new(IstioCertificateResponse { cert_chain })),
            Err(refusal) => {
                tracing::warn!(
                    node = %refusal.node,
                    identity = %refusal.identity,
                    reason = %refusal.status.message(),
                    code = ?refusal.status.code(),
                    "CA: refused a certificate request"
                );
                Err(refusal.status)
            }
        }
    }
}

/// The identity a node agent asks for on a pod's behalf (`metadata.ImpersonatedIdentity`).
fn impersonated(request: &IstioCertificateRequest) -> Option<String> {
    let value = request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?;
    match &value.kind {
        Some(Kind::StringValue(text)) => Some(text.clone()),
        // Present but not a string: refused when parsed, as any malformed id.
        _ => Some(String::new()),
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, String> {
    let value = metadata
        .get(AUTHORIZATION)
        .ok_or_else(|| {
            "no bearer token (gRPC metadata 'authorization: Bearer <token>')".to_owned()
        })?
        .to_str()
        .map_err(|_| "the authorization metadata is not ASCII".to_owned())?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| "the authorization metadata is not 'Bearer <token>'".to_owned())?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the authorization metadata is not 'Bearer <token>'".to_owned());
    }
    Ok(token)
}
