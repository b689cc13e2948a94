//! What can go wrong loading a CA or signing with it.

use std::path::PathBuf;
use std::time::Duration;

use crate::{cert, trust};

/// A CA that cannot be loaded, or a request it refuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the request (the caller's fault: gRPC `InvalidArgument`) ---
    /// The CSR is not PEM, or not a PKCS#10 request.
    #[error("the certificate signing request is malformed: {0}")]
    CsrMalformed(String),
    /// The CSR's signature does not verify with its own key.
    #[error("the certificate signing request's signature does not verify with its public key")]
    CsrSignature,
    /// The CSR's key is not an ECDSA P-256 key.
    #[error(
        "the certificate signing request's key is {found}, but workload certificates use ECDSA \
         P-256 keys"
    )]
    CsrKey {
        /// The key's algorithm (and curve) as found.
        found: String,
    },
    /// The CSR asks for something other than exactly the requested identity.
    #[error(
        "the certificate signing request must name exactly {requested} as its only SAN, but it \
         names {found:?}"
    )]
    CsrIdentity {
        /// The identity the caller asked for.
        requested: String,
        /// The SANs in the CSR.
        found: Vec<String>,
    },
    /// The requested lifetime is longer than the CA allows.
    #[error("a lifetime of {requested:?} was requested; this CA issues at most {max:?}")]
    TtlTooLong {
        /// What was asked for.
        requested: Duration,
        /// The CA's limit ([`SignerOptions::max_ttl`](super::SignerOptions::max_ttl)).
        max: Duration,
    },

    // --- loading (the operator's to fix) ---
    /// A CA file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file of the self-signed root could not be written.
    #[error("writing {path}: {source} (is the state directory writable by shunt-agent?)")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Only one of the self-signed root's two files exists.
    #[error(
        "{present} exists but {missing} does not; shunt will not replace a root it cannot \
         load whole: restore {missing}, or remove {present} to start a new root (every \
         workload certificate of the old one stops being trusted)"
    )]
    PartialRoot {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// A CA certificate could not be read.
    #[error(transparent)]
    Cert(#[from] cert::Error),
    /// A CA private key could not be read.
    #[error(
        "{what}: not a usable private key: {source} (ring needs a PKCS#8 key, \
         '-----BEGIN PRIVATE KEY-----': convert with `openssl pkcs8 -topk8 -nocrypt`)"
    )]
    Key {
        /// The file or field.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The signing certificate is not a CA certificate.
    #[error("{what} is not a CA certificate (basicConstraints CA:true is missing)")]
    NotCa {
        /// The file or field.
        what: String,
    },
    /// A certificate of the CA's chain is not signed by the next one.
    #[error("{what} is not signed by {issuer}: {reason}")]
    ChainBroken {
        /// The certificate.
        what: String,
        /// The certificate that should have signed it.
        issuer: String,
        /// The verifier's complaint.
        reason: String,
    },
    /// `ca-cert.pem` is not `root-cert.pem` itself and no `root-cert.pem` was given.
    #[error("{what} is not self-signed, so a root certificate (root-cert.pem) is needed too")]
    NoRoot {
        /// The file or field.
        what: String,
    },
    /// A certificate issued at load time did not verify against the CA's own bundle: the key
    /// does not match the certificate, or the chain does not lead to the root.
    #[error(
        "the CA fails its self-check (a certificate it signs does not verify against its own \
         root): {0}; check that ca-key.pem is the key of ca-cert.pem and that ca-cert.pem, \
         cert-chain.pem and root-cert.pem form one chain, each valid now"
    )]
    SelfCheck(#[source] trust::Error),
    /// The trust bundle could not be built.
    #[error(transparent)]
    Trust(trust::Error),

    // --- internal ---
    /// rcgen could not make or sign a certificate.
    #[error("issuing a certificate: {0}")]
    Issue(#[source] rcgen::Error),
}

impl Error {
    /// Whether the error is the request's fault (a bad CSR, a mismatching identity, a
    /// lifetime too long), as opposed to the CA's.
    #[must_use]
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::CsrMalformed(_)
                | Self::CsrSignature
                | Self::CsrKey { .. }
                | Self::CsrIdentity { .. }
                | Self::TtlTooLong { .. }
        )
    }
}
