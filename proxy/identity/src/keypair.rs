//! A TLS server's own certificate chain and private key from PEM (a gateway's Secret, or its
//! files), checked as rustls will use them: every certificate parses, the key is one ring can
//! sign with, and it belongs to the leaf.

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::sign::CertifiedKey;

use crate::cert;
use crate::crypto;

/// Why a certificate and key cannot serve TLS. The caller names where they came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The chain holds no certificate, or one that does not parse.
    #[error(transparent)]
    Chain(#[from] cert::Error),
    /// The key is not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[error(
        "the private key is not a PEM private key (expected -----BEGIN PRIVATE KEY-----, \
         RSA PRIVATE KEY or EC PRIVATE KEY): {0}"
    )]
    Key(String),
    /// The key is of a kind ring cannot sign with, or does not belong to the leaf.
    #[error("the private key does not belong to the leaf certificate, or cannot sign: {0}")]
    KeyMismatch(rustls::Error),
}

/// The chain (leaf first, sent as written) and key of a TLS server, ready for rustls.
/// `what` names the chain's source in errors (`Secret edge/site key tls.crt`).
pub fn certified_key(chain_pem: &str, key_pem: &str, what: &str) -> Result<CertifiedKey, Error> {
    let chain = cert::parse_pem(chain_pem, what)?;
    for (index, der) in chain.iter().enumerate() {
        cert::info(der, &format!("{what}: certificate {index}"))?;
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Key(e.to_string()))?;
    CertifiedKey::from_der(chain, key, &crypto::provider()).map_err(Error::KeyMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_others_say_why_not() {
        let (cert, key) = self_signed("a.example.test");
        let (_, other_key) = self_signed("b.example.test");
        let loaded = certified_key(&cert, &key, "test").unwrap();
        assert_eq!(loaded.cert.len(), 1);

        type Check = fn(&Error) -> bool;
        let cases: [(&str, &str, &str, Check); 4] = [
            ("another key", &cert, &other_key, |e| {
                matches!(e, Error::KeyMismatch(_))
            }),
            ("no key", &cert, "", |e| matches!(e, Error::Key(_))),
            ("no certificate", "", &key, |e| {
                matches!(e, Error::Chain(cert::Error::NoPem { .. }))
            }),
            (
                "garbage in the block",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key,
                |e| matches!(e, Error::Chain(cert::Error::Der { .. })),
            ),
        ];
        for (case, cert, key, check) in cases {
            let error = certified_key(cert, key, "test").expect_err(case);
            assert!(check(&error), "{case}: {error:?}");
        }
    }

    #[test]
    fn subject_alt_names_of_every_kind_are_listed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.test".to_owned(), "10.1.2.3".to_owned()])
                .unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/edge/sa/client"
                .try_into()
                .unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let sans = cert::subject_alt_names(cert.der(), "test").unwrap();
        assert_eq!(
            sans,
            [
                "a.example.test",
                "10.1.2.3",
                "spiffe://cluster.local/ns/edge/sa/client"
            ]
        );
    }
}
