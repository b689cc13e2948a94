//! A fresh key and certificate signing request for a workload identity, as ztunnel makes
//! them: a P-256 key, an empty subject, and one (critical) URI SAN with the SPIFFE id.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use shunt_mesh::spiffe::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating the key failed (the system's random source?).
    #[error("generating a P-256 key for {id}: {source}")]
    Key {
        /// The identity the key was for.
        id: SpiffeId,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Encoding the request failed.
    #[error("encoding the certificate signing request for {id}: {source}")]
    Request {
        /// The identity asked for.
        id: SpiffeId,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// A private key and the CSR that asks for a certificate of its public key.
pub struct KeyAndCsr {
    /// The private key, PKCS#8 PEM. Never logged.
    pub key_pem: String,
    /// The certificate signing request, PEM.
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"[elided]")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// A new P-256 key and a CSR for `id`: empty subject, the SPIFFE id as the only SAN (critical,
/// as RFC 5280 wants for an empty subject). The CA decides everything else.
pub fn generate(id: &SpiffeId) -> Result<KeyAndCsr, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Key {
        id: id.clone(),
        source,
    })?;
    let request = |source| Error::Request {
        id: id.clone(),
        source,
    };
    let mut params = CertificateParams::default();
    // rcgen's default subject is a CN; Istio's requests have none.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(request)?)];
    let csr = params.serialize_request(&key).map_err(request)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(request)?,
    })
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer as _;

    use super::*;

    #[test]
    fn csr_has_the_identity_as_its_only_critical_uri_san_and_a_p256_key() {
        let id: SpiffeId = "spiffe://cluster.local/ns/ns1/sa/sa1".parse().unwrap();
        let made = generate(&id).unwrap();
        assert!(made.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{made:?}").contains("BEGIN PRIVATE KEY"));

        let der = pem::parse(&made.csr_pem).unwrap();
        assert_eq!(der.tag(), "CERTIFICATE REQUEST");
        let (_, csr) = X509CertificationRequest::from_der(der.contents()).unwrap();
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "subject must be empty");
        assert_eq!(
            info.subject_pki.algorithm.algorithm,
            OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = info.subject_pki.algorithm.parameters.as_ref().unwrap();
        assert_eq!(curve.as_oid().unwrap(), OID_EC_P256);

        let extensions: Vec<_> = csr.requested_extensions().unwrap().collect();
        assert_eq!(extensions.len(), 1, "{extensions:?}");
        let ParsedExtension::SubjectAlternativeName(san) = extensions[0] else {
            panic!("not a SAN: {:?}", extensions[0]);
        };
        assert_eq!(
            san.general_names,
            vec![GeneralName::URI("spiffe://cluster.local/ns/ns1/sa/sa1")]
        );
        // The CSR's attribute list keeps the criticality: look it up on the raw extension.
        let critical = info
            .iter_attributes()
            .flat_map(|attribute| match attribute.parsed_attribute() {
                x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(request) => {
                    request.extensions.iter().map(|e| e.critical).collect()
                }
                _ => Vec::new(),
            })
            .collect::<Vec<_>>();
        assert_eq!(critical, vec![true]);
    }

    #[test]
    fn every_request_has_its_own_key() {
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        assert_ne!(
            generate(&id).unwrap().key_pem,
            generate(&id).unwrap().key_pem
        );
    }
}
