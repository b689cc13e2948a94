//! The mesh's trust bundle: the root certificates a workload certificate must chain to. More
//! than one during a root rotation (the old and the new root are both trusted until every
//! certificate of the old one has been replaced).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;

use crate::cert;
use crate::crypto;

/// Why a bundle could not be built, or a chain does not verify against it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A root could not be read.
    #[error("trust bundle: {0}")]
    Cert(#[from] cert::Error),
    /// A root is not usable as a trust anchor.
    #[error("trust bundle: root {index} is not a usable trust anchor: {source}")]
    Anchor {
        /// Its position in the bundle.
        index: usize,
        /// What webpki found.
        source: rustls::Error,
    },
    /// The bundle has no root: nothing would verify (refused rather than trusting nothing
    /// silently).
    #[error("trust bundle: no root certificate given")]
    Empty,
    /// The chain is empty.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The chain does not verify: bad signature, unknown issuer, expired, wrong usage.
    #[error("the certificate chain does not verify against the trust bundle: {0}")]
    Untrusted(rustls::Error),
}

/// The roots a workload certificate must chain to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

impl TrustBundle {
    /// A bundle of these roots (DER). At least one.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::Empty);
        }
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        for root in roots {
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        let mut store = RootCertStore::empty();
        for (index, root) in unique.iter().enumerate() {
            cert::info(root, &format!("trust bundle root {index}"))?;
            store
                .add(root.clone())
                .map_err(|source| Error::Anchor { index, source })?;
        }
        Ok(Self {
            roots: unique,
            store: Arc::new(store),
        })
    }

    /// A bundle of every certificate in `pem` (e.g. a `root-cert.pem`, or several roots
    /// concatenated).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        Self::new(cert::parse_pem(pem, "trust bundle")?)
    }

    /// This bundle and the roots in `pem` too (root rotation: trust the new root beside the
    /// old one).
    pub fn with_pem(&self, pem: &str) -> Result<Self, Error> {
        let mut roots = self.roots.clone();
        roots.extend(cert::parse_pem(pem, "extra trust bundle roots")?);
        Self::new(roots)
    }

    /// The roots, DER, without duplicates, in the order given.
    #[must_use]
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as concatenated PEM.
    #[must_use]
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|root| cert::to_pem(root)).collect()
    }

    /// The roots as rustls' store, for verifiers.
    #[must_use]
    pub fn root_store(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.store)
    }

    /// Whether `der` is one of the roots.
    #[must_use]
    pub fn contains(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|root| root.as_ref() == der)
    }

    /// Checks that `chain` (leaf first; the rest intermediates, a root among them is
    /// harmless) chains to one of the roots at `now`, with signatures, validity periods and
    /// the server-auth key usage checked by webpki, as a TLS client would.
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: SystemTime) -> Result<(), Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(Error::EmptyChain)?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(Error::Untrusted)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.store,
            intermediates,
            unix_time(now),
            crypto::provider().signature_verification_algorithms.all,
        )
        .map_err(Error::Untrusted)
    }
}

/// `now` as webpki's time (the epoch for a clock set before 1970, which nothing verifies at).
pub(crate) fn unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{id, root_pems, signer, workload_cert};

    #[test]
    fn bundles_hold_distinct_roots() {
        assert!(matches!(TrustBundle::new(Vec::new()), Err(Error::Empty)));
        assert!(matches!(
            TrustBundle::from_pem("nothing"),
            Err(Error::Cert(_))
        ));
        let (first, _) = root_pems("first");
        let (second, _) = root_pems("second");
        let bundle = TrustBundle::from_pem(&format!("{first}{first}")).unwrap();
        assert_eq!(bundle.roots().len(), 1);
        let both = bundle.with_pem(&second).unwrap();
        assert_eq!(both.roots().len(), 2);
        assert_eq!(both.to_pem(), format!("{first}{second}"));
        assert_eq!(both.root_store().len(), 2);
    }

    #[test]
    fn chains_verify_only_against_their_root() {
        let signer = signer();
        let cert = workload_cert(&signer, &id("spiffe://cluster.local/ns/a/sa/b"));
        let now = SystemTime::now();
        signer.trust_bundle().verify(cert.chain(), now).unwrap();
        // Root rotation: a bundle with the old root beside a new one still verifies it.
        let (next, _) = root_pems("next");
        let rotated = signer.trust_bundle().with_pem(&next).unwrap();
        rotated.verify(cert.chain(), now).unwrap();

        let strangers = TrustBundle::from_pem(&next).unwrap();
        assert!(matches!(
            strangers.verify(cert.chain(), now),
            Err(Error::Untrusted(_))
        ));
        assert!(matches!(strangers.verify(&[], now), Err(Error::EmptyChain)));
        let later = now + std::time::Duration::from_secs(2 * 24 * 3600);
        assert!(matches!(
            signer.trust_bundle().verify(cert.chain(), later),
            Err(Error::Untrusted(_))
        ));
    }
}
