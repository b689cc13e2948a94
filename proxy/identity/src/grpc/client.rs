//! The CA client: asks an `IstioCertificateService` (shunt-agent's, or istiod's) for a
//! workload certificate, with the metadata ztunnel sends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prost_types::value::Kind;
use shunt_mesh::spiffe::SpiffeId;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::proto::pb::IstioCertificateRequest;
use super::proto::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use super::proto::{AUTHORIZATION, CLUSTER_ID, DEFAULT_SERVER_NAME, IMPERSONATED_IDENTITY};
use crate::csr;
use crate::trust::{self, TrustBundle};
use crate::workload::{self, WorkloadCert};

/// Why a certificate could not be had from the CA.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address or TLS settings are unusable.
    #[error("CA client for {address}: {reason}")]
    Config {
        /// The CA's address.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// The token file could not be read.
    #[error("reading the CA token {path}: {source} (is the projected token mounted?)")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token file is empty or cannot be a header value.
    #[error("the CA token {path} is {reason}")]
    BadToken {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key and CSR could not be made.
    #[error(transparent)]
    Csr(#[from] csr::Error),
    /// The CA refused, or could not be reached.
    #[error("the CA at {address} answered {code:?} for {id}: {message}")]
    Rpc {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        id: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message (the CA's reason).
        message: String,
    },
    /// The CA answered with no certificate.
    #[error("the CA at {address} returned an empty certificate chain for {id}")]
    EmptyResponse {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        id: String,
    },
    /// The returned certificate cannot be used.
    #[error("the certificate the CA at {address} returned for {id}: {source}")]
    Cert {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        id: String,
        /// What is wrong with it.
        source: workload::Error,
    },
    /// The returned certificate is for another identity.
    #[error("the CA at {address} returned a certificate for {got} when {requested} was asked for")]
    WrongIdentity {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        requested: String,
        /// The identity in the certificate.
        got: String,
    },
    /// The returned chain does not lead to a root of the bundle.
    #[error("the certificate the CA at {address} returned for {id} is not trusted: {source}")]
    Untrusted {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        id: String,
        /// Why it does not verify.
        source: trust::Error,
    },
}

/// Where the CA is and how to talk to it.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// The CA's address, `https://host:port` (`host:port` means the same). Plain `http` is
    /// refused: the token and certificates never travel in clear.
    pub address: String,
    /// The roots the CA's TLS certificate, and every issued chain, must chain to.
    pub roots: TrustBundle,
    /// The name the CA's TLS certificate must have (default `istiod.istio-system.svc`).
    pub server_name: String,
    /// The bearer token file, read again at each request (projected tokens rotate). `None`
    /// sends no token (a CA with `allow_unauthenticated`).
    pub token_path: Option<PathBuf>,
    /// The requested certificate lifetime (default 24 h).
    pub ttl: Duration,
    /// Sent as `clusterid` metadata, as ztunnel sends its `CLUSTER_ID` (default
    /// `Kubernetes`, Istio's default cluster name).
    pub cluster_id: Option<String>,
    /// How long one request may take, connecting included (default 10 s).
    pub timeout: Duration,
}

impl CaClientConfig {
    /// A client of the CA at `address` trusting `roots`, with the defaults above.
    #[must_use]
    pub fn new(address: impl Into<String>, roots: TrustBundle) -> Self {
        Self {
            address: address.into(),
            roots,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            token_path: None,
            ttl: Duration::from_secs(24 * 3600),
            cluster_id: Some("Kubernetes".to_owned()),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A client of the CA, shared by every fetch (one HTTP/2 connection, redialled as needed).
#[derive(Clone, Debug)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    config: CaClientConfig,
}

impl CaClient {
    /// A client for `config`. Connects lazily, at the first fetch; must be called inside a
    /// Tokio runtime.
    pub fn new(mut config: CaClientConfig) -> Result<Self, ClientError> {
        if !config.address.contains("://") {
            config.address = format!("https://{}", config.address);
        }
        let config_error = |reason: String| ClientError::Config {
            address: config.address.clone(),
            reason,
        };
        if !config.address.starts_with("https://") {
            return Err(config_error(
                "the CA must be reached over TLS: use an https:// address".to_owned(),
            ));
        }
        let tls = ClientTlsConfig::new()
            .domain_name(config.server_name.clone())
            .ca_certificate(Certificate::from_pem(config.roots.to_pem()));
        let endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| config_error(format!("not a valid address: {e}")))?
            .tls_config(tls)
            .map_err(|e| config_error(format!("TLS settings: {e}")))?
            .connect_timeout(config.timeout)
            .timeout(config.timeout);
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            config,
        })
    }

    /// What this client was made with.
    #[must_use]
    pub fn config(&self) -> &CaClientConfig {
        &self.config
    }

    /// A new key and a certificate for `id`: a CSR sent with `ImpersonatedIdentity` = `id`
    /// and the bearer token; the answer must certify `id` and chain to a root of the bundle.
    pub async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, ClientError> {
        let address = || self.config.address.clone();
        let made = csr::generate(id)?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: made.csr_pem,
            validity_duration: i64::try_from(self.config.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(prost_types::Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY.to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(id.to_string())),
                    },
                )]),
            }),
        });
        if let Some(token) = self.bearer()? {
            request.metadata_mut().insert(AUTHORIZATION, token);
        }
        if let Some(cluster) = &self.config.cluster_id
            && let Ok(value) = AsciiMetadataValue::try_from(cluster.as_str())
        {
            request.metadata_mut().insert(CLUSTER_ID, value);
        }

        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| ClientError::Rpc {
                address: address(),
                id: id.to_string(),
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        if response.cert_chain.is_empty() {
            return Err(ClientError::EmptyResponse {
                address: address(),
                id: id.to_string(),
            });
        }
        let cert =
            WorkloadCert::from_pem(&made.key_pem, &response.cert_chain).map_err(|source| {
                ClientError::Cert {
                    address: address(),
                    id: id.to_string(),
                    source,
                }
            })?;
        if cert.identity() != id {
            return Err(ClientError::WrongIdentity {
                address: address(),
                requested: id.to_string(),
                got: cert.identity().to_string(),
            });
        }
        self.config
            .roots
            .verify(cert.chain(), SystemTime::now())
            .map_err(|source| ClientError::Untrusted {
                address: address(),
                id: id.to_string(),
                source,
            })?;
        Ok(cert)
    }

    /// `Bearer <token>` from the token file, read now.
    fn bearer(&self) -> Result<Option<AsciiMetadataValue>, ClientError> {
        let Some(path) = &self.config.token_path else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|source| ClientError::Token {
            path: path.clone(),
            source,
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::BadToken {
                path: path.clone(),
                reason: "empty",
            });
        }
        AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| ClientError::BadToken {
                path: path.clone(),
                reason: "not printable ASCII",
            })
    }
}
