//! Where workload certificates come from: the seam between the [`CertManager`] and a CA.
//!
//! [`CertManager`]: crate::manager::CertManager

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use shunt_mesh::spiffe::SpiffeId;

use crate::ca::{self, CaSigner};
use crate::csr;
use crate::grpc::{CaClient, ClientError};
use crate::workload::{self, WorkloadCert};

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The remote CA failed or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The key and CSR could not be made.
    #[error(transparent)]
    Csr(#[from] csr::Error),
    /// The in-process CA refused.
    #[error("the in-process CA could not sign for {id}: {source}")]
    Sign {
        /// The identity asked for.
        id: String,
        /// The signer's error.
        source: ca::Error,
    },
    /// The issued certificate cannot be used.
    #[error("the certificate issued for {id}: {source}")]
    Cert {
        /// The identity asked for.
        id: String,
        /// What is wrong with it.
        source: workload::Error,
    },
    /// Any other provider's failure (tests' fakes).
    #[error("{0}")]
    Other(String),
}

/// The future of a [`CertProvider::fetch`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<WorkloadCert, Error>> + Send + 'a>>;

/// Something that issues a fresh key and certificate for an identity. Object-safe, so the
/// manager holds an `Arc<dyn CertProvider>`.
pub trait CertProvider: Send + Sync {
    /// A new key and certificate for `id`.
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a>;
}

impl CertProvider for CaClient {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        Box::pin(async move { Ok(CaClient::fetch(self, id).await?) })
    }
}

impl<T: CertProvider + ?Sized> CertProvider for Arc<T> {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        (**self).fetch(id)
    }
}

/// A CA in this process: makes a key and CSR and signs it with a [`CaSigner`] directly, no
/// network and no authorization. For tests and local experiments (a single-node mesh where
/// the proxy is its own CA); production proxies use a [`CaClient`].
#[derive(Clone, Debug)]
pub struct InProcessCa {
    signer: Arc<CaSigner>,
    ttl: Duration,
}

impl InProcessCa {
    /// Issues with `signer`, each certificate valid for `ttl` (zero: the signer's default).
    #[must_use]
    pub fn new(signer: Arc<CaSigner>, ttl: Duration) -> Self {
        Self { signer, ttl }
    }

    /// The signer it issues with.
    #[must_use]
    pub fn signer(&self) -> &Arc<CaSigner> {
        &self.signer
    }

    /// A key and certificate for `id`, synchronously.
    pub fn issue(&self, id: &SpiffeId) -> Result<WorkloadCert, Error> {
        let made = csr::generate(id)?;
        let chain = self
            .signer
            .sign(&made.csr_pem, id, self.ttl)
            .map_err(|source| Error::Sign {
                id: id.to_string(),
                source,
            })?;
        WorkloadCert::from_pem(&made.key_pem, &chain).map_err(|source| Error::Cert {
            id: id.to_string(),
            source,
        })
    }
}

impl CertProvider for InProcessCa {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        Box::pin(std::future::ready(self.issue(id)))
    }
}
