//! An issued workload certificate: its key, its chain, and what the proxy needs to know of it.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use shunt_mesh::spiffe::SpiffeId;

use crate::cert::{self, CertInfo};
use crate::crypto;

/// Why an issued certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The chain is empty.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// A certificate of the chain could not be read.
    #[error(transparent)]
    Cert(#[from] cert::Error),
    /// The private key could not be read.
    #[error("the workload private key is not a PEM private key: {0}")]
    Key(String),
    /// The private key does not belong to the leaf, or rustls cannot use it.
    #[error("the workload private key cannot sign for the leaf certificate: {0}")]
    KeyMismatch(rustls::Error),
}

/// A workload's key and certificate chain (leaf first, root last), with the facts read from
/// the leaf.
pub struct WorkloadCert {
    identity: SpiffeId,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    chain_info: Vec<CertInfo>,
    certified: Arc<CertifiedKey>,
}

impl WorkloadCert {
    /// A certificate from its private key and chain, PEM. Each element of `chain_pem` may
    /// hold several certificates (istiod sends its intermediates in one string); the first
    /// certificate overall is the leaf, and it must name exactly one SPIFFE id.
    pub fn from_pem(key_pem: &str, chain_pem: &[String]) -> Result<Self, Error> {
        let mut chain = Vec::new();
        for (index, pem) in chain_pem.iter().enumerate() {
            chain.extend(cert::parse_pem(
                pem,
                &format!("certificate chain entry {index}"),
            )?);
        }
        let leaf = chain.first().ok_or(Error::EmptyChain)?;
        let identity = cert::identity(leaf, "workload certificate")?;
        let chain_info = chain
            .iter()
            .enumerate()
            .map(|(index, der)| cert::info(der, &format!("certificate chain entry {index}")))
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Key(e.to_string()))?;

        // Peers are sent the leaf and intermediates; they have the root already.
        let mut presented = chain.clone();
        if presented.len() > 1
            && let Some(last) = presented.last()
            && cert::is_self_issued(last, "certificate chain root")?
        {
            presented.pop();
        }
        let certified = CertifiedKey::from_der(presented, key, &crypto::provider())
            .map_err(Error::KeyMismatch)?;
        Ok(Self {
            identity,
            key_pem: key_pem.to_owned(),
            chain,
            chain_info,
            certified: Arc::new(certified),
        })
    }

    /// The SPIFFE id the leaf certifies.
    #[must_use]
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The leaf's serial number, lower-case hex.
    #[must_use]
    pub fn serial(&self) -> &str {
        &self.leaf_info().serial
    }

    /// The leaf's `NotBefore`.
    #[must_use]
    pub fn not_before(&self) -> SystemTime {
        self.leaf_info().not_before
    }

    /// The leaf's `NotAfter`.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.leaf_info().not_after
    }

    /// Whether the leaf is within its validity period at `t` (both ends included, as webpki
    /// checks).
    #[must_use]
    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        self.not_before() <= t && t <= self.not_after()
    }

    /// When to fetch the next certificate: half-way through the leaf's lifetime, as ztunnel
    /// and the Istio agent do, leaving the other half for retries.
    #[must_use]
    pub fn rotation_due(&self) -> SystemTime {
        let lifetime = self
            .not_after()
            .duration_since(self.not_before())
            .unwrap_or_default();
        self.not_before() + lifetime / 2
    }

    /// The chain, DER, leaf first and root (when the CA sent it) last.
    #[must_use]
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain as PEM blocks, leaf first.
    #[must_use]
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|der| cert::to_pem(der)).collect()
    }

    /// The subject, issuer, serial and validity of each certificate of the chain.
    #[must_use]
    pub fn chain_info(&self) -> &[CertInfo] {
        &self.chain_info
    }

    /// The private key, PKCS#8 PEM.
    #[must_use]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The key and the chain to present (leaf and intermediates), as rustls signs with them.
    /// Shared: every handshake with this certificate uses the same one.
    #[must_use]
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    fn leaf_info(&self) -> &CertInfo {
        // `from_pem` refuses an empty chain, so there is always a leaf.
        &self.chain_info[0]
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial())
            .field("not_before", &self.not_before())
            .field("not_after", &self.not_after())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{CaSigner, SignerOptions};
    use crate::test_support::{id, plugin_pems, signer};

    const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    #[test]
    fn chain_strings_may_hold_several_certificates() {
        let signer = signer();
        let made = crate::csr::generate(&id(SLEEP)).unwrap();
        let chain = signer
            .sign(&made.csr_pem, &id(SLEEP), Duration::ZERO)
            .unwrap();
        let joined = vec![chain.concat()];
        for chain_pem in [chain.clone(), joined] {
            let cert = WorkloadCert::from_pem(&made.key_pem, &chain_pem).unwrap();
            assert_eq!(cert.identity(), &id(SLEEP));
            assert_eq!(cert.chain_pem(), chain);
            // Peers get the leaf; they have the root.
            assert_eq!(cert.certified_key().cert, cert.chain()[..1]);
            assert_eq!(cert.key_pem(), made.key_pem);
        }
    }

    #[test]
    fn intermediates_are_presented_and_the_root_is_not() {
        let (pems, _, _) = plugin_pems();
        let signer = CaSigner::from_pem(&pems, SignerOptions::default()).unwrap();
        let made = crate::csr::generate(&id(SLEEP)).unwrap();
        let chain = signer
            .sign(&made.csr_pem, &id(SLEEP), Duration::ZERO)
            .unwrap();
        let cert = WorkloadCert::from_pem(&made.key_pem, &chain).unwrap();
        assert_eq!(cert.chain().len(), 3);
        assert_eq!(cert.certified_key().cert, cert.chain()[..2]);
        assert_eq!(cert.chain_info()[1].subject, "O=plug-in intermediate");
        assert_eq!(cert.chain_info()[0].issuer, "O=plug-in intermediate");
    }

    #[test]
    fn validity_and_rotation() {
        let cert = crate::test_support::workload_cert(&signer(), &id(SLEEP));
        let (start, end) = (cert.not_before(), cert.not_after());
        let second = Duration::from_secs(1);
        let cases = [
            (start - second, false),
            (start, true),
            (cert.rotation_due(), true),
            (end, true),
            (end + second, false),
        ];
        for (t, valid) in cases {
            assert_eq!(cert.is_valid_at(t), valid, "{t:?}");
        }
        let lifetime = end.duration_since(start).unwrap();
        assert_eq!(cert.rotation_due(), start + lifetime / 2);
        assert!(cert.rotation_due() > SystemTime::now());
    }

    #[test]
    fn unusable_certificates_are_refused() {
        let signer = signer();
        let made = crate::csr::generate(&id(SLEEP)).unwrap();
        let chain = signer
            .sign(&made.csr_pem, &id(SLEEP), Duration::ZERO)
            .unwrap();
        let other_key = crate::csr::generate(&id(SLEEP)).unwrap().key_pem;
        let (server_chain, server_key) = signer
            .issue_server_cert(&["ca.example".to_owned()], &[], Duration::ZERO)
            .unwrap();
        type Check = fn(&Error) -> bool;
        let cases: Vec<(&str, &str, Vec<String>, Check)> = vec![
            ("no chain", &made.key_pem, vec![], |e| {
                matches!(e, Error::EmptyChain)
            }),
            ("another key", &other_key, chain.clone(), |e| {
                matches!(e, Error::KeyMismatch(_))
            }),
            ("no key", "", chain.clone(), |e| matches!(e, Error::Key(_))),
            ("no SPIFFE id", &server_key, server_chain, |e| {
                matches!(e, Error::Cert(cert::Error::Identity { .. }))
            }),
            ("not PEM", &made.key_pem, vec!["nonsense".to_owned()], |e| {
                matches!(e, Error::Cert(cert::Error::NoPem { .. }))
            }),
        ];
        for (case, key, chain, check) in cases {
            let error = WorkloadCert::from_pem(key, &chain).expect_err(case);
            assert!(check(&error), "{case}: {error:?}");
        }
    }
}
