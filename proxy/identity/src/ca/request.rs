//! Checking a certificate signing request before anything of it is signed.

use shunt_mesh::spiffe::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer as _;

use super::error::Error;

/// A parsed CSR whose signature verified.
pub(crate) struct Request {
    /// The public key to certify, SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// Every SAN the request asks for, as text (`URI:…`, `DNS:…`, …).
    pub sans: Vec<String>,
    /// The URI SANs alone.
    pub uris: Vec<String>,
}

/// Parses `csr_pem`, checks its signature and that its key is ECDSA P-256.
pub(crate) fn parse(csr_pem: &str) -> Result<Request, Error> {
    let block = pem::parse(csr_pem).map_err(|e| Error::CsrMalformed(format!("PEM: {e}")))?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(Error::CsrMalformed(format!(
            "the PEM block is {:?}, not CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| Error::CsrMalformed(format!("PKCS#10: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::CsrMalformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|_| Error::CsrSignature)?;

    let key = &csr.certification_request_info.subject_pki;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok());
    if key.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(Error::CsrKey {
            found: match curve {
                Some(curve) => format!("{} on curve {curve}", key.algorithm.algorithm),
                None => key.algorithm.algorithm.to_string(),
            },
        });
    }

    let mut sans = Vec::new();
    let mut uris = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                    sans.push(format!("URI:{uri}"));
                } else {
                    sans.push(name.to_string());
                }
            }
        }
    }
    Ok(Request {
        spki: key.raw.to_vec(),
        sans,
        uris,
    })
}

impl Request {
    /// Requires that the request names `requested` and nothing else.
    pub fn require_only(&self, requested: &SpiffeId) -> Result<(), Error> {
        let wanted = requested.to_string();
        if self.sans.len() == 1 && self.uris.len() == 1 && self.uris[0] == wanted {
            Ok(())
        } else {
            Err(Error::CsrIdentity {
                requested: wanted,
                found: self.sans.clone(),
            })
        }
    }
}

/// The SPIFFE identity a CSR asks for: its only SAN, a `spiffe://` URI. For callers that do
/// not say which identity they want (a sidecar asking for its own).
pub fn csr_identity(csr_pem: &str) -> Result<SpiffeId, Error> {
    let request = parse(csr_pem)?;
    match (request.sans.len(), request.uris.first()) {
        (1, Some(uri)) => uri.parse().map_err(|e: shunt_mesh::spiffe::SpiffeIdError| {
            Error::CsrMalformed(format!("its URI SAN is not a SPIFFE id: {e}"))
        }),
        _ => Err(Error::CsrMalformed(format!(
            "it must name exactly one SPIFFE id as its only SAN, but names {:?}",
            request.sans
        ))),
    }
}
